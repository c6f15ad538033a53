//! Workspace-level tests live in this package's test targets; the library is empty.
