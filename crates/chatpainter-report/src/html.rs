//! Small HTML helpers. Every string that comes from a file (configs, captions, reasons, paths)
//! passes through [`esc`]; the markup around it is ours.

use base64::Engine;
use std::fmt::Write;

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A PNG as an `<img>` with a data URI, so the page needs no file next to it; `width` is the
/// displayed width in CSS pixels.
pub fn png_img(bytes: &[u8], alt: &str, width: u32) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!(
        "<img alt=\"{}\" width=\"{width}\" src=\"data:image/png;base64,{data}\">",
        esc(alt)
    )
}

/// A table from a header and rows of already-escaped cells.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

pub use chatpainter_artifacts::display::human_bytes as bytes;

/// A number for a table: plain for ordinary magnitudes, scientific for tiny or huge ones.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

pub use chatpainter_artifacts::display::utc_time as utc;

/// A duration in seconds as `1 h 02 min`, `3 min 04 s` or `5 s`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min {:02} s", s / 60, s % 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn numbers_and_durations() {
        assert_eq!(num(2e-4), "2.000e-4");
        assert_eq!(num(1.5), "1.5000");
        assert_eq!(duration(3725), "1 h 02 min");
    }
}
