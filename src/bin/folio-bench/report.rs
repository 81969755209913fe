//! Results: latency percentiles, table rows with their baseline and target,
//! and the report written as JSON, markdown and an SVG latency plot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use super::Profile;

/// Sorted durations with nearest-rank percentiles.
#[derive(Default, Clone)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn new(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Self(v)
    }

    /// A CPU share as a percentage of one core, or "n/a".
    pub fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn ms(&self, p: f64) -> f64 {
        self.pct(p).as_secs_f64() * 1e3
    }
}

/// One line of the results table.
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
    /// The baseline it is compared with, named, and its value.
    pub baseline: Option<(String, f64)>,
    pub target: Option<Goal>,
}

/// A target of issue 6: pass when `value <= limit` (or `>=` when `at_least`).
#[derive(Clone)]
pub struct Goal {
    pub text: String,
    pub limit: f64,
    pub at_least: bool,
}

impl Row {
    pub fn new(scenario: &str, metric: &str, value: f64, unit: &'static str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            metric: metric.to_owned(),
            value,
            unit,
            baseline: None,
            target: None,
        }
    }

    pub fn vs(mut self, name: &str, baseline: f64) -> Self {
        self.baseline = Some((name.to_owned(), baseline));
        self
    }

    pub fn target(mut self, text: &str, limit: f64, at_least: bool) -> Self {
        self.target = Some(Goal {
            text: text.to_owned(),
            limit,
            at_least,
        });
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, b)| *b > 0.0)
            .map(|(_, b)| self.value / b)
    }

    pub fn pass(&self) -> Option<bool> {
        self.target.as_ref().map(|t| {
            if t.at_least {
                self.value >= t.limit
            } else {
                self.value <= t.limit
            }
        })
    }
}

pub fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{:.0}%", v * 100.0))
}

/// A value with its unit and as many decimals as its size deserves.
pub fn fmt(v: f64, unit: &str) -> String {
    if v >= 1000.0 {
        format!("{v:.0} {unit}")
    } else if v >= 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.3} {unit}")
    }
}
/// `target/bench-results` (or under `CARGO_TARGET_DIR`).
pub fn default_out() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-results")
}

/// Everything a run writes out.
pub struct Report {
    pub profile: Profile,
    pub seed: u64,
    pub trace: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub total_secs: f64,
}

impl Report {
    fn machine() -> String {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or("unknown CPU", str::trim)
            .to_owned();
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        format!("{model}, {cores} cores available to the tool")
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "\n### folio-bench ({:?} profile, seed {}, trace {})\n\nMachine: {}. Run took {:.1} s.\n\n\
             | scenario | metric | value | baseline | ratio | target | pass |\n\
             | --- | --- | ---: | --- | ---: | --- | --- |\n",
            self.profile,
            self.seed,
            self.trace,
            Self::machine(),
            self.total_secs
        );
        for r in &self.rows {
            let baseline = r
                .baseline
                .as_ref()
                .map_or_else(String::new, |(n, b)| format!("{n}: {}", fmt(*b, r.unit)));
            let ratio = r.ratio().map_or_else(String::new, |x| format!("{x:.2}×"));
            let target = r
                .target
                .as_ref()
                .map_or_else(String::new, |t| t.text.clone());
            let pass = match r.pass() {
                Some(true) => "pass",
                Some(false) => "**fail**",
                None => "",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.scenario,
                r.metric,
                fmt(r.value, r.unit),
                baseline,
                ratio,
                target,
                pass
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("\n- {n}"));
        }
        out.push('\n');
        out
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "profile": format!("{:?}", self.profile).to_lowercase(),
            "seed": self.seed,
            "trace": self.trace,
            "machine": Self::machine(),
            "total_secs": self.total_secs,
            "rows": self.rows.iter().map(|r| json!({
                "scenario": r.scenario,
                "metric": r.metric,
                "value": r.value,
                "unit": r.unit,
                "baseline": r.baseline.as_ref().map(|(n, b)| json!({"name": n, "value": b})),
                "ratio": r.ratio(),
                "target": r.target.as_ref().map(|t| json!({"text": t.text, "limit": t.limit, "at_least": t.at_least})),
                "pass": r.pass(),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    pub fn write(&self, dir: &Path, plots: &[(String, Latencies)]) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(&self.json())?;
        std::fs::write(dir.join("folio-bench.json"), json + "\n")?;
        std::fs::write(dir.join("folio-bench.md"), self.markdown())?;
        std::fs::write(dir.join("folio-bench-latency.svg"), latency_svg(plots))?;
        Ok(())
    }
}

/// Latency distributions as an SVG plot: percentile (x) against latency
/// (y, log scale), one line per series.
fn latency_svg(series: &[(String, Latencies)]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 400.0;
    const PAD: f64 = 60.0;
    const COLOURS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let (lo, hi) = (0.01_f64, 1000.0_f64); // ms
    let y = |ms: f64| {
        let f = (ms.clamp(lo, hi).log10() - lo.log10()) / (hi.log10() - lo.log10());
        H - PAD - f * (H - 2.0 * PAD)
    };
    // x: percentile on a "nines" scale, so the tail gets room.
    let x = |p: f64| {
        let nines = -(1.0 - p.min(0.9999)).log10() / 4.0;
        PAD + nines * (W - 2.0 * PAD)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for ms in [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0] {
        let y0 = y(ms);
        svg.push_str(&format!(
            "<line x1=\"{PAD}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"5\" y=\"{:.1}\">{ms} ms</text>\n",
            W - PAD,
            y0 + 4.0,
        ));
    }
    for (p, label) in [
        (0.0, "p0"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
    ] {
        svg.push_str(&format!(
            "<line x1=\"{x0:.1}\" x2=\"{x0:.1}\" y1=\"{PAD}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x0:.1}\" y=\"{}\">{label}</text>\n",
            H - PAD,
            H - PAD + 15.0,
            x0 = x(p)
        ));
    }
    for (i, (name, lat)) in series.iter().enumerate() {
        if lat.0.is_empty() {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        let n = lat.0.len();
        let step = (n / 400).max(1);
        let points: Vec<String> = (0..n)
            .step_by(step)
            .chain(std::iter::once(n - 1))
            .map(|k| {
                let p = k as f64 / n as f64;
                format!("{:.1},{:.1}", x(p), y(lat.0[k].as_secs_f64() * 1e3))
            })
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>\n",
            points.join(" "),
            PAD + 10.0,
            PAD + 14.0 * i as f64,
            xml_escape(name)
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"20\" font-size=\"13\">folio-bench latency by percentile (log scale)</text>\n</svg>\n",
        PAD
    ));
    svg
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
