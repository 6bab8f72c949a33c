//! SVG charts of the benchmarks' figures (plotters), written under `docs/bench/` where
//! BENCHMARKS.md shows them beside its tables. Each run of a benchmark rewrites its charts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// Where the charts go: `docs/bench/` of the repository.
pub fn dir() -> PathBuf {
    system_tests::repo_root().join("docs/bench")
}

/// Colours of the series, in order (a colour-blind-safe palette).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn failed<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("chart: {e:?}")
}

/// A figure as the charts print it: whole above 100, one decimal below.
fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The series' names, in a box at the lower right.
fn legend<'a, DB, X, Y>(chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>) -> Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(failed)
}

/// One bar of [`bars`]: a name, the value, and the range it came from (whiskers).
pub struct Bar<'a> {
    pub name: &'a str,
    pub value: f64,
    pub range: Option<(f64, f64)>,
}

/// A horizontal bar chart, one bar per entry, in order from the top.
pub fn bars(path: &Path, title: &str, unit: &str, entries: &[Bar<'_>]) -> Result<()> {
    let high = entries
        .iter()
        .map(|b| b.range.map_or(b.value, |(_, hi)| hi.max(b.value)))
        .fold(0.0, f64::max)
        * 1.2;
    let height = 90 + 34 * entries.len() as u32;
    let root = SVGBackend::new(path, (760, height)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let n = entries.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(130)
        .build_cartesian_2d(0.0..high.max(1.0), (0..n).into_segmented())
        .map_err(failed)?;
    let names: Vec<&str> = entries.iter().map(|b| b.name).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(unit)
        .x_label_formatter(&|v| number(*v))
        .y_labels(entries.len())
        .y_label_formatter(&|v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => names
                .get((n - 1 - *i) as usize)
                .map_or(String::new(), |s| s.to_string()),
            _ => String::new(),
        })
        .draw()
        .map_err(failed)?;
    for (i, bar) in entries.iter().enumerate() {
        let row = n - 1 - i as i32;
        let style = colour(i).filled();
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row)),
                    (bar.value, SegmentValue::Exact(row + 1)),
                ],
                style,
            )))
            .map_err(failed)?;
        // The figure right of the bar and its whisker.
        let right = bar.range.map_or(bar.value, |(_, hi)| hi.max(bar.value));
        chart
            .draw_series(std::iter::once(Text::new(
                number(bar.value),
                (right + high * 0.01, SegmentValue::CenterOf(row)),
                ("sans-serif", 13).into_font(),
            )))
            .map_err(failed)?;
        if let Some((lo, hi)) = bar.range {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (lo, SegmentValue::CenterOf(row)),
                        (hi, SegmentValue::CenterOf(row)),
                    ],
                    BLACK.stroke_width(2),
                )))
                .map_err(failed)?;
        }
    }
    root.present().map_err(failed)?;
    Ok(())
}

/// Grouped bars: for each name, one bar per label of `groups` (e.g. p50 and p99).
pub fn grouped(
    path: &Path,
    title: &str,
    unit: &str,
    groups: &[&str],
    entries: &[(&str, Vec<f64>)],
) -> Result<()> {
    let high = entries
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max)
        * 1.15;
    let k = groups.len() as i32;
    let n = entries.len() as i32;
    let height = 90 + (14 * k as u32 + 16) * entries.len() as u32;
    let root = SVGBackend::new(path, (760, height)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(130)
        .build_cartesian_2d(0.0..high.max(0.001), 0..n * (k + 1))
        .map_err(failed)?;
    let names: Vec<&str> = entries.iter().map(|(name, _)| *name).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(unit)
        .y_labels((n * (k + 1)) as usize)
        .y_label_formatter(&|y: &i32| {
            let (entry, slot) = (n - 1 - y / (k + 1), y % (k + 1));
            if slot == k / 2 {
                names
                    .get(entry as usize)
                    .map_or(String::new(), |s| s.to_string())
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(failed)?;
    for (g, label) in groups.iter().enumerate() {
        let style = colour(g).filled();
        let bars = entries.iter().enumerate().filter_map(|(i, (_, v))| {
            let row = (n - 1 - i as i32) * (k + 1) + (k - 1 - g as i32) + 1;
            v.get(g)
                .map(|value| Rectangle::new([(0.0, row), (*value, row - 1)], style))
        });
        chart
            .draw_series(bars)
            .map_err(failed)?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], style));
    }
    legend(&mut chart)?;
    root.present().map_err(failed)?;
    Ok(())
}

/// The cumulative distribution of each series of delays, on a logarithmic axis of
/// milliseconds.
pub fn cdf(path: &Path, title: &str, series: &[(&str, Vec<Duration>)]) -> Result<()> {
    let all_ms = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|d| d.as_secs_f64() * 1000.0));
    let low = all_ms.clone().fold(f64::MAX, f64::min).max(0.01) * 0.8;
    let high = all_ms.fold(0.0, f64::max).max(low * 10.0) * 1.25;
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((low..high).log_scale(), 0.0..1.0)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_desc("share of revocations")
        .x_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(failed)?;
    for (i, (name, samples)) in series.iter().enumerate() {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let count = ms.len().max(1) as f64;
        let points = ms
            .iter()
            .enumerate()
            .map(|(j, v)| (*v, (j + 1) as f64 / count));
        let style = colour(i).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(failed)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    legend(&mut chart)?;
    root.present().map_err(failed)?;
    Ok(())
}
