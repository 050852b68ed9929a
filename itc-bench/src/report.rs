//! Results: repeated measurements, their median with min and max, the ratio to the
//! baseline, the target, a table for people and JSON lines for machines.

use std::fmt::Write as _;

use serde_json::json;

/// What a figure must satisfy.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// No target: reported for information.
    None,
    /// ITC's median must be at least this many times the baseline's.
    RatioAtLeast(f64),
    /// ITC's median must be at most this many times the baseline's.
    RatioAtMost(f64),
    /// ITC's median must be below this absolute value (in the row's unit).
    Below(f64),
}

impl Target {
    fn describe(self, unit: Unit) -> String {
        match self {
            Self::None => String::new(),
            Self::RatioAtLeast(r) => format!(">= {r}x"),
            Self::RatioAtMost(r) => format!("<= {r}x"),
            Self::Below(v) => format!("< {}", unit.format(v)),
        }
    }
}

/// The unit of a row, for printing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Per second.
    PerSecond,
    /// Seconds (latencies).
    Seconds,
    /// Mebibytes.
    Mebibytes,
    /// Kibibytes.
    Kibibytes,
    /// Percent of one core.
    PercentCore,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Self::PerSecond => "1/s",
            Self::Seconds => "s",
            Self::Mebibytes => "MiB",
            Self::Kibibytes => "KiB",
            Self::PercentCore => "% of a core",
        }
    }

    /// A value for people: `1.23M/s`, `850µs`, `120.4 MiB`.
    pub(crate) fn format(self, v: f64) -> String {
        match self {
            Self::PerSecond if v >= 1e6 => format!("{:.2}M/s", v / 1e6),
            Self::PerSecond if v >= 1e3 => format!("{:.1}k/s", v / 1e3),
            Self::PerSecond => format!("{v:.0}/s"),
            Self::Seconds if v >= 1.0 => format!("{v:.2}s"),
            Self::Seconds if v >= 1e-3 => format!("{:.2}ms", v * 1e3),
            Self::Seconds => format!("{:.0}µs", v * 1e6),
            Self::Mebibytes => format!("{v:.1} MiB"),
            Self::Kibibytes => format!("{v:.1} KiB"),
            Self::PercentCore => format!("{v:.2}%"),
        }
    }
}

/// One figure of one scenario: the baseline's and ITC's values, one per repeat.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// e.g. `fanout S=100 (durable)`.
    pub(crate) scenario: String,
    /// e.g. `delivered`.
    pub(crate) metric: &'static str,
    /// Unit of the values.
    pub(crate) unit: Unit,
    /// The baseline's values (empty when the figure has no baseline).
    pub(crate) baseline: Vec<f64>,
    /// ITC's values.
    pub(crate) itc: Vec<f64>,
    /// What ITC must meet.
    pub(crate) target: Target,
}

/// Median, min and max of some values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    /// The median (the mean of the middle two for an even count).
    pub(crate) median: f64,
    /// The smallest.
    pub(crate) min: f64,
    /// The largest.
    pub(crate) max: f64,
}

impl Summary {
    /// `None` for no values.
    pub(crate) fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

impl Row {
    /// ITC's median over the baseline's.
    pub(crate) fn ratio(&self) -> Option<f64> {
        let itc = Summary::of(&self.itc)?;
        let base = Summary::of(&self.baseline)?;
        (base.median > 0.0).then(|| itc.median / base.median)
    }

    /// Whether the target is met (`None`: no target, or nothing measured).
    pub(crate) fn met(&self) -> Option<bool> {
        match self.target {
            Target::None => None,
            Target::RatioAtLeast(r) => self.ratio().map(|x| x >= r),
            Target::RatioAtMost(r) => self.ratio().map(|x| x <= r),
            Target::Below(v) => Summary::of(&self.itc).map(|s| s.median < v),
        }
    }

    /// The row as one JSON object.
    pub(crate) fn json(&self) -> serde_json::Value {
        let summary = |values: &[f64]| {
            Summary::of(values).map(|s| json!({"median": s.median, "min": s.min, "max": s.max, "values": values}))
        };
        json!({
            "scenario": self.scenario,
            "metric": self.metric,
            "unit": self.unit.name(),
            "baseline": summary(&self.baseline),
            "itc": summary(&self.itc),
            "ratio": self.ratio(),
            "target": self.target.describe(self.unit),
            "met": self.met(),
        })
    }
}

/// All rows of a run, in the order first seen.
#[derive(Debug, Default)]
pub(crate) struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Adds one repeat's values to the row `(scenario, metric)`, creating it if new.
    pub(crate) fn add(
        &mut self,
        scenario: &str,
        metric: &'static str,
        unit: Unit,
        target: Target,
        baseline: Option<f64>,
        itc: f64,
    ) {
        let row = match self
            .rows
            .iter_mut()
            .position(|r| r.scenario == scenario && r.metric == metric)
        {
            Some(i) => &mut self.rows[i],
            None => {
                self.rows.push(Row {
                    scenario: scenario.to_owned(),
                    metric,
                    unit,
                    baseline: Vec::new(),
                    itc: Vec::new(),
                    target,
                });
                let last = self.rows.len() - 1;
                &mut self.rows[last]
            }
        };
        row.baseline.extend(baseline);
        row.itc.push(itc);
        let shown = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| unit.format(v));
        eprintln!(
            "  {scenario} {metric}: baseline {} itc {}",
            shown(baseline),
            shown(Some(itc))
        );
    }

    /// The rows.
    pub(crate) fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The table for people.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let cell = |unit: Unit, values: &[f64]| match Summary::of(values) {
            None => "-".to_owned(),
            Some(s) if values.len() == 1 => unit.format(s.median),
            Some(s) => format!(
                "{} [{} – {}]",
                unit.format(s.median),
                unit.format(s.min),
                unit.format(s.max)
            ),
        };
        let header = [
            "scenario",
            "metric",
            "baseline median [min – max]",
            "itc median [min – max]",
            "ratio",
            "target",
            "met",
        ];
        let mut lines: Vec<[String; 7]> = vec![header.map(str::to_owned)];
        for row in &self.rows {
            lines.push([
                row.scenario.clone(),
                row.metric.to_owned(),
                cell(row.unit, &row.baseline),
                cell(row.unit, &row.itc),
                row.ratio().map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
                row.target.describe(row.unit),
                match row.met() {
                    None => String::new(),
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                },
            ]);
        }
        let mut widths = [0usize; 7];
        for line in &lines {
            for (w, c) in widths.iter_mut().zip(line) {
                *w = (*w).max(c.chars().count());
            }
        }
        for (i, line) in lines.iter().enumerate() {
            let cells: Vec<String> = line
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | ").trim_end());
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_ratio() {
        assert!(Summary::of(&[]).is_none());
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);

        let row = Row {
            scenario: "x".into(),
            metric: "m",
            unit: Unit::PerSecond,
            baseline: vec![100.0, 200.0, 300.0],
            itc: vec![150.0, 140.0, 160.0],
            target: Target::RatioAtLeast(0.7),
        };
        assert_eq!(row.ratio(), Some(0.75));
        assert_eq!(row.met(), Some(true));
        let row = Row {
            target: Target::RatioAtMost(0.7),
            ..row
        };
        assert_eq!(row.met(), Some(false));
        let row = Row {
            target: Target::Below(150.0),
            ..row
        };
        assert_eq!(row.met(), Some(false));
        assert_eq!(row.json()["itc"]["median"], 150.0);
    }

    #[test]
    fn units_read_well() {
        assert_eq!(Unit::PerSecond.format(1_234_567.0), "1.23M/s");
        assert_eq!(Unit::PerSecond.format(45_600.0), "45.6k/s");
        assert_eq!(Unit::Seconds.format(0.00125), "1.25ms");
        assert_eq!(Unit::Seconds.format(0.000_850), "850µs");
    }
}
