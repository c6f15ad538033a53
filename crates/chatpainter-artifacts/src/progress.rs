//! Progress reporting from libraries without tying them to a terminal: the CLI implements this
//! with progress bars, tests and CI use [`NoProgress`].

pub trait Progress: Sync {
    /// A new phase of `total` units begins (`total` 0 = unknown).
    fn start(&self, label: &str, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// The current phase is over.
    fn finish(&self);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}
