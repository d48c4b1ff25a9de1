//! Line charts written as SVG by hand: axes with ticks, one coloured line per series and a
//! legend. Enough for the simulator's charts, with no plotting dependency.

use std::fmt::Write;

/// One line: its name and points (x, y).
pub type Series = (String, Vec<(f64, f64)>);

/// How a chart is labelled and scaled.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Label of the x axis.
    pub x_label: &'a str,
    /// Label of the y axis.
    pub y_label: &'a str,
    /// Whether x is on a log₁₀ scale (values must be > 0).
    pub log_x: bool,
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#8c564b",
];
const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A readable tick label.
fn tick_label(v: f64) -> String {
    if v.abs() >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Chart<'_> {
    /// The chart as an SVG document.
    pub fn render(&self, series: &[Series]) -> String {
        let tx = |x: f64| if self.log_x { x.max(1e-9).log10() } else { x };
        let points = series.iter().flat_map(|(_, p)| p.iter());
        let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
        for &(x, y) in points {
            x0 = x0.min(tx(x));
            x1 = x1.max(tx(x));
            y1 = y1.max(y);
        }
        if !x0.is_finite() || x1 <= x0 {
            (x0, x1) = (0.0, 1.0);
        }
        if y1 <= 0.0 {
            y1 = 1.0;
        }
        y1 *= 1.05;
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let px = |x: f64| LEFT + (tx(x) - x0) / (x1 - x0) * pw;
        let py = |y: f64| TOP + ph - y / y1 * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            W / 2.0,
            escape(self.title)
        );
        self.axes(&mut s, (x0, x1, y1), &px, &py);
        for (i, (name, pts)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let path: Vec<String> = pts
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"#,
                path.join(" ")
            );
            let ly = TOP + 16.0 + 18.0 * i as f64;
            let lx = W - RIGHT + 12.0;
            let _ = write!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                lx + 20.0,
                lx + 26.0,
                ly + 4.0,
                escape(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    fn axes(
        &self,
        s: &mut String,
        (x0, x1, y1): (f64, f64, f64),
        px: &dyn Fn(f64) -> f64,
        py: &dyn Fn(f64) -> f64,
    ) {
        let (bottom, right) = (H - BOTTOM, W - RIGHT);
        let _ = write!(
            s,
            r##"<path d="M{LEFT},{TOP} V{bottom} H{right}" stroke="#333" fill="none"/>"##
        );
        for k in 0..=5 {
            let y = y1 / 1.05 * f64::from(k) / 5.0;
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" x2="{right}" y1="{0:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{1}" y="{2:.1}" text-anchor="end">{3}</text>"##,
                py(y),
                LEFT - 6.0,
                py(y) + 4.0,
                tick_label(y)
            );
        }
        let ticks: Vec<f64> = if self.log_x {
            (x0.floor() as i32..=x1.ceil() as i32)
                .map(|e| 10f64.powi(e))
                .filter(|v| (x0..=x1).contains(&v.log10()))
                .collect()
        } else {
            (0..=6)
                .map(|k| x0 + (x1 - x0) * f64::from(k) / 6.0)
                .collect()
        };
        for x in ticks {
            let _ = write!(
                s,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{bottom}" y2="{1}" stroke="#333"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
                px(x),
                bottom + 5.0,
                bottom + 18.0,
                tick_label(x)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            LEFT + (right - LEFT) / 2.0,
            H - 12.0,
            escape(self.x_label),
            TOP + (bottom - TOP) / 2.0,
            escape(self.y_label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_document_with_every_series() {
        let chart = Chart {
            title: "a <b>",
            x_label: "x",
            y_label: "y",
            log_x: true,
        };
        let svg = chart.render(&[
            ("one".into(), vec![(1.0, 1.0), (100.0, 2.0)]),
            ("two".into(), vec![(10.0, 0.5)]),
        ]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;b&gt;"));
    }
}
