//! `--chart FILE.svg`: three panels over the seconds of the run — the line
//! length, admissions per second and the origin's requests in flight — so
//! one picture shows the line filling and draining while the origin stays
//! flat under its limit.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::report::Report;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 780;
const TITLE_HEIGHT: u32 = 44;
/// Colours that stay distinct for the common colour-vision deficiencies.
const BLUE: RGBColor = RGBColor(0x1d, 0x4e, 0xd8);
const GREEN: RGBColor = RGBColor(0x05, 0x96, 0x69);
const ORANGE: RGBColor = RGBColor(0xd9, 0x77, 0x06);
const GREY: RGBColor = RGBColor(0x6b, 0x72, 0x80);

/// Draws the chart of `report` and writes it to `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), String> {
    let svg = render_svg(report).map_err(|e| format!("cannot draw the chart: {e}"))?;
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The chart as SVG text.
pub fn render_svg(report: &Report) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (title, body) = root.split_vertically(TITLE_HEIGHT);
        let heading = format!(
            "digue surge — {} — {} pupils, {} curve to {}/s",
            report.scenario.name,
            report.scenario.pupils,
            report.scenario.curve,
            report.scenario.peak_rate
        );
        title
            .draw_text(
                &heading,
                &("sans-serif", 20).into_font().color(&BLACK),
                (16, 14),
            )
            .map_err(|e| e.to_string())?;
        let panels = body.split_evenly((3, 1));
        let t = &report.timeline;
        let sampled = report.origin.is_some();
        let pupils_waiting: Vec<Option<u64>> = t.iter().map(|p| Some(p.pupils_waiting)).collect();
        if sampled {
            // Both views: digue's line also holds tickets nobody will claim
            // (bots, pupils who left), the simulator knows who still waits.
            let line: Vec<Option<u64>> = t.iter().map(|p| p.line_waiting).collect();
            panel(
                &panels[0],
                "Line length",
                &[
                    ("digue_line_waiting", &line, BLUE),
                    ("pupils waiting (simulator)", &pupils_waiting, GREY),
                ],
                None,
            )?;
        } else {
            panel(
                &panels[0],
                "Pupils waiting (simulator's view; no --admin)",
                &[("pupils waiting", &pupils_waiting, BLUE)],
                None,
            )?;
        }
        let admissions: Vec<Option<u64>> = t.iter().map(|p| Some(p.admissions)).collect();
        panel(
            &panels[1],
            "Admissions per second",
            &[("admissions", &admissions, GREEN)],
            None,
        )?;
        let in_flight: Vec<Option<u64>> = t.iter().map(|p| p.origin_in_flight).collect();
        let limit = report.origin.as_ref().and_then(|o| o.limit);
        let caption = if sampled {
            "Origin requests in flight (digue_origin_in_flight; dashed: the limit)"
        } else {
            "Origin requests in flight: not sampled (run with --admin URL)"
        };
        panel(
            &panels[2],
            caption,
            &[("in flight", &in_flight, ORANGE)],
            limit,
        )?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A series: its legend, values by second (`None` where unsampled), colour.
type Series<'a> = (&'a str, &'a [Option<u64>], RGBColor);

/// One panel: series over seconds (gaps where unsampled), a legend when
/// there are several, and, if given, a dashed limit line.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    series: &[Series<'_>],
    limit: Option<u64>,
) -> Result<(), String> {
    let len = series.iter().map(|s| s.1.len()).max().unwrap_or(0);
    let x_max = (len.max(2) - 1) as f64;
    let top = series
        .iter()
        .flat_map(|s| s.1.iter().flatten().copied())
        .chain(limit)
        .max()
        .unwrap_or(0);
    let y_max = (top as f64 * 1.1).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| e.to_string())?;
    for (label, values, colour) in series {
        draw_series(&mut chart, values, *colour, label)?;
    }
    if let Some(limit) = limit {
        let y = limit as f64;
        // Dashes by hand: `line_series` is the only series feature enabled.
        let dash = (x_max / 60.0).max(0.5);
        let mut x = 0.0;
        while x < x_max {
            chart
                .draw_series(LineSeries::new(
                    [(x, y), ((x + dash).min(x_max), y)],
                    GREY.stroke_width(1),
                ))
                .map_err(|e| e.to_string())?;
            x += dash * 2.0;
        }
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One series; consecutive sampled seconds form a segment, a gap breaks
/// the line. The first segment carries the legend entry.
fn draw_series<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    values: &[Option<u64>],
    colour: RGBColor,
    label: &str,
) -> Result<(), String> {
    let mut segment: Vec<(f64, f64)> = Vec::new();
    let mut segments = Vec::new();
    for (s, v) in values.iter().enumerate() {
        match v {
            Some(v) => segment.push((s as f64, *v as f64)),
            None if !segment.is_empty() => segments.push(std::mem::take(&mut segment)),
            None => {}
        }
    }
    if !segment.is_empty() {
        segments.push(segment);
    }
    for (i, points) in segments.into_iter().enumerate() {
        let drawn = chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if i == 0 {
            drawn.label(label).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        }
    }
    Ok(())
}
