//! Training curves as inline SVG, drawn with `plotters`' SVG backend.
//!
//! SVG because the page must open from disk with nothing beside it and render on a machine
//! without fonts: plotters lays text out with its built-in size estimate (no `ttf` feature, so no
//! fontconfig/freetype) and the browser draws the glyphs.

use plotters::prelude::*;

/// Line colours (Tableau 10 order): distinguishable on white, unlike a generic palette's yellows.
const COLORS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// The CSS colour of the `i`-th series of a chart, for its legend.
pub fn css_color(i: usize) -> String {
    let RGBColor(r, g, b) = color(i);
    format!("rgb({r},{g},{b})")
}

/// Width and height of one chart, in pixels.
const SIZE: (u32, u32) = (560, 300);

/// Averages consecutive points into at most `max` buckets, so a run of a million steps still
/// makes a small page; the curve's shape (trends, not single-step noise) is what the chart shows.
pub fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    let max = max.max(2);
    if points.len() <= max {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .map(|chunk| {
            let n = chunk.len() as f64;
            let (sx, sy) = chunk
                .iter()
                .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
            (sx / n, sy / n)
        })
        .collect()
}

/// Tick labels: plain for ordinary magnitudes, scientific for learning rates and the like.
fn tick(v: &f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-2..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Data range padded by 5 % (or by a little around a constant), so lines never sit on the frame.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    } else {
        let pad = (lo.abs() * 0.1).max(1e-9);
        (lo - pad, hi + pad)
    }
}

/// One line chart of `series` (label, points) against x (`x_label`: the step of training curves,
/// the number of turns of the per-turn curve), as an `<svg>` element.
///
/// # Errors
/// The plotting library's message when drawing fails; there is nothing to draw when every series
/// is empty.
pub fn line_chart(
    title: &str,
    x_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<String, String> {
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(format!("{title}: no points"));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (y0, y1) = padded(y0, y1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            // Steps are integers: no more ticks than steps, and no label on a fractional one.
            .x_labels(((x1 - x0) as usize + 1).clamp(2, 6))
            .y_labels(6)
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-6 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&tick)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| e.to_string())?;
        // The legend is HTML under the chart (see `css_color`): inside the plot it hides lines.
        for (i, (_, points)) in series.iter().enumerate() {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color(i).stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    // Inline SVG in HTML gets its namespace from the parser; dropping the attribute keeps the
    // page free of URLs.
    Ok(svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn downsample_averages_buckets() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, i as f64)).collect();
        let d = downsample(&points, 5);
        assert_eq!(
            d,
            vec![(0.5, 0.5), (2.5, 2.5), (4.5, 4.5), (6.5, 6.5), (8.5, 8.5)]
        );
        assert_eq!(downsample(&points, 100), points);
    }

    #[test]
    fn chart_is_svg_with_text_and_no_url() {
        let svg = line_chart(
            "Losses",
            "step",
            &[
                ("d_loss", vec![(1.0, 1.0), (2.0, 0.5)]),
                ("g_loss", vec![(1.0, 2.0)]),
            ],
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("Losses") && svg.contains("<text"));
        assert!(!svg.contains("http"));
        // A single point and a constant value still draw.
        assert!(line_chart("lr", "step", &[("lr_g", vec![(3.0, 2e-4)])]).is_ok());
        assert!(line_chart("none", "step", &[("x", vec![])]).is_err());
    }
}
