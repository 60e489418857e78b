//! A small hand-written SVG line chart: panels stacked on one time axis, each with its y axis,
//! ticks, labels and one polyline per series, and one legend (a colour per client) for all.
//! No plotting crate: the shapes are few and fixed, and the output must be easy to check.
//!
//! Each polyline carries `class` (its panel's), `data-series` (the client) and the extra
//! `data-*` attributes its maker gives, so a test or a script can read the figures back.

use std::fmt::Write;

/// Ten distinguishable colours (the "tab10" palette); more series reuse them with dashes.
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
const WIDTH: f64 = 960.0;
const LEFT: f64 = 80.0;
const PLOT_W: f64 = 680.0;
const PANEL_H: f64 = 250.0;
/// Vertical space per panel: the plot, its x labels, and the gap to the next.
const PANEL_STEP: f64 = 330.0;
const TOP: f64 = 60.0;

/// One line of a panel.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Extra attributes, written as `data-KEY="VALUE"`.
    pub data: Vec<(&'static str, String)>,
}

/// One chart of the stack.
#[derive(Clone, Debug)]
pub struct Panel {
    /// The CSS class of its polylines (e.g. "held").
    pub class: &'static str,
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Escapes text for an XML attribute or element.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// A round step for about `target` ticks from 0 to `max`: 1, 2 or 5 times a power of ten.
pub fn nice_step(max: f64, target: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let k = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    k * mag
}

/// A tick label without needless digits.
fn tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

/// The top of an axis: `max` rounded up to a whole step (at least one step).
fn axis_top(max: f64, step: f64) -> f64 {
    ((max / step).ceil() * step).max(step)
}

/// Draws the panels on one time axis from 0 to `x_max` (labelled `x_label`), with a legend of
/// `names` (series are coloured by their name's place in it).
pub fn chart(title: &str, x_label: &str, x_max: f64, names: &[String], panels: &[Panel]) -> String {
    let height = TOP + PANEL_STEP * panels.len() as f64;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        o,
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text class=\"title\" x=\"{}\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">{}</text>",
        LEFT + PLOT_W / 2.0,
        esc(title)
    );
    let x_max = if x_max.is_finite() && x_max > 0.0 {
        x_max
    } else {
        1.0
    };
    let x_step = nice_step(x_max, 8.0);
    let x_top = axis_top(x_max, x_step);
    for (k, p) in panels.iter().enumerate() {
        let top = TOP + PANEL_STEP * k as f64;
        panel(&mut o, p, top, x_label, x_step, x_top, names);
    }
    legend(&mut o, names);
    o.push_str("</svg>\n");
    o
}

fn color(names: &[String], name: &str) -> (&'static str, &'static str) {
    let i = names.iter().position(|n| n == name).unwrap_or(0);
    let dash = match (i / COLORS.len()) % 3 {
        0 => "",
        1 => " stroke-dasharray=\"6 3\"",
        _ => " stroke-dasharray=\"2 2\"",
    };
    (COLORS[i % COLORS.len()], dash)
}

fn panel(
    o: &mut String,
    p: &Panel,
    top: f64,
    x_label: &str,
    x_step: f64,
    x_top: f64,
    names: &[String],
) {
    let y_max = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|q| q.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let y_step = nice_step(y_max, 5.0);
    let y_top = axis_top(y_max, y_step);
    let bottom = top + PANEL_H;
    let sx = |x: f64| LEFT + (x / x_top).clamp(0.0, 1.0) * PLOT_W;
    let sy = |y: f64| bottom - (y / y_top).clamp(0.0, 1.0) * PANEL_H;
    let _ = writeln!(
        o,
        "<g class=\"panel\" data-panel=\"{}\">\n\
         <text class=\"panel-title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        p.class,
        LEFT + PLOT_W / 2.0,
        top - 8.0,
        esc(&p.title)
    );
    // Grid and ticks.
    let mut v = 0.0;
    while v <= y_top + y_step / 2.0 {
        let y = sy(v);
        let _ = writeln!(
            o,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + PLOT_W,
            LEFT - 6.0,
            y + 4.0,
            tick(v, y_step)
        );
        v += y_step;
    }
    let mut v = 0.0;
    while v <= x_top + x_step / 2.0 {
        let x = sx(v);
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{bottom:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#444\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            bottom + 5.0,
            bottom + 18.0,
            tick(v, x_step)
        );
        v += x_step;
    }
    // Axes and their labels.
    let _ = writeln!(
        o,
        "<path d=\"M{LEFT},{top} V{bottom} H{}\" fill=\"none\" stroke=\"#444\"/>\n\
         <text class=\"axis-label x\" x=\"{}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text class=\"axis-label y\" transform=\"translate({},{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        LEFT + PLOT_W,
        LEFT + PLOT_W / 2.0,
        bottom + 38.0,
        esc(x_label),
        LEFT - 52.0,
        top + PANEL_H / 2.0,
        esc(&p.y_label)
    );
    for s in &p.series {
        let (c, dash) = color(names, &s.name);
        let mut pts = String::new();
        for (x, y) in &s.points {
            if x.is_finite() && y.is_finite() {
                let _ = write!(pts, "{:.1},{:.1} ", sx(*x), sy(*y));
            }
        }
        let mut data = String::new();
        for (k, v) in &s.data {
            let _ = write!(data, " data-{k}=\"{}\"", esc(v));
        }
        let _ = writeln!(
            o,
            "<polyline class=\"{}\" data-series=\"{}\"{data} fill=\"none\" stroke=\"{c}\"{dash} \
             stroke-width=\"1.5\" points=\"{}\"/>",
            p.class,
            esc(&s.name),
            pts.trim_end()
        );
    }
    o.push_str("</g>\n");
}

fn legend(o: &mut String, names: &[String]) {
    let x = LEFT + PLOT_W + 24.0;
    let _ = writeln!(o, "<g class=\"legend\">");
    for (i, n) in names.iter().enumerate() {
        let y = TOP + 10.0 + 18.0 * i as f64;
        let (c, dash) = color(names, n);
        let _ = writeln!(
            o,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{c}\"{dash} stroke-width=\"3\"/>\
             <text class=\"legend-entry\" x=\"{}\" y=\"{}\">{}</text>",
            x + 22.0,
            x + 28.0,
            y + 4.0,
            esc(n)
        );
    }
    o.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(12.0, 8.0), 2.0);
        assert_eq!(nice_step(1500.0, 5.0), 500.0);
        assert_eq!(nice_step(0.3, 5.0), 0.1);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(axis_top(12.0, 2.0), 12.0);
        assert_eq!(axis_top(12.1, 2.0), 14.0);
        assert_eq!(axis_top(0.0, 1.0), 1.0);
        assert_eq!(tick(0.30000000000000004, 0.1), "0.3");
        assert_eq!(tick(1500.0, 500.0), "1500");
    }

    #[test]
    fn a_chart_has_its_series_labels_and_legend() {
        let names = vec!["a<b".to_string(), "c".to_string()];
        let series = |n: &str| Series {
            name: n.into(),
            points: vec![(0.0, 0.0), (1.0, 2.0), (f64::NAN, 1.0)],
            data: vec![("final", "2".into())],
        };
        let p = Panel {
            class: "held",
            title: "Held".into(),
            y_label: "MiB".into(),
            series: vec![series("a<b"), series("c")],
        };
        let svg = chart("T & U", "time (s)", 1.0, &names, &[p]);
        assert_eq!(svg.matches("<polyline class=\"held\"").count(), 2);
        assert!(svg.contains("data-series=\"a&lt;b\" data-final=\"2\""));
        assert!(svg.contains(">T &amp; U</text>"));
        assert!(svg.contains(">time (s)</text>") && svg.contains(">MiB</text>"));
        assert_eq!(svg.matches("class=\"legend-entry\"").count(), 2);
        assert!(!svg.contains("NaN"));
    }
}
