//! Goal progress: a Goal's `achievementStatus` from a patient's scores, by the usual
//! measurement-based-care rules (thresholds are data: `GoalRules`), and the progress view of a
//! plan (`$progress`: Parameters, or an SVG chart).

use std::collections::HashSet;
use std::fmt::Write;

use serde_json::{json, Value};

use super::scoring::{number, same_coding, Band, GoalRules};

pub const GOAL_ACHIEVEMENT: &str = "http://terminology.hl7.org/CodeSystem/goal-achievement";

/// One score of a patient: when (µs), the value, and the Observation that holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub at: i64,
    pub when: String,
    pub value: f64,
    pub reference: String,
}

/// The targets of a Goal that measure `code` (a Coding).
pub fn targets_for<'a>(goal: &'a Value, code: &Value) -> Vec<&'a Value> {
    goal["target"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["measure"]["coding"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| same_coding(c, code)))
        })
        .collect()
}

/// Whether a value meets a Goal target's detail (`detailQuantity` with its comparator,
/// `detailRange`, `detailInteger`); None when the target has no numeric detail.
pub fn meets(target: &Value, value: f64) -> Option<bool> {
    if let Some(q) = target.get("detailQuantity") {
        let t = q["value"].as_f64()?;
        return Some(match q["comparator"].as_str() {
            Some("<") => value < t,
            Some("<=") => value <= t,
            Some(">") => value > t,
            Some(">=") => value >= t,
            _ => value == t,
        });
    }
    if let Some(r) = target.get("detailRange") {
        let low = r["low"]["value"].as_f64();
        let high = r["high"]["value"].as_f64();
        if low.is_none() && high.is_none() {
            return None;
        }
        return Some(low.is_none_or(|l| value >= l) && high.is_none_or(|h| value <= h));
    }
    target["detailInteger"].as_f64().map(|t| value == t)
}

/// The baseline of a series for a goal that started at `start` (µs, end of its start date): the
/// last score on or before the start, else the first score.
pub fn baseline(series: &[Point], start: Option<i64>) -> Option<&Point> {
    start
        .and_then(|s| series.iter().rev().find(|p| p.at < s))
        .or_else(|| series.first())
}

/// The status code a Goal measured by `series` has: `achieved` when the latest score meets a
/// target; otherwise, against the baseline, `improving` (a drop of `improvement_points`, or of
/// `improvement_percent`), `worsening` (a rise of `worsening_points`) or `no-change`;
/// `in-progress` while the baseline is the only score.
pub fn status(
    targets: &[&Value],
    rules: &GoalRules,
    series: &[Point],
    start: Option<i64>,
) -> Option<&'static str> {
    let latest = series.last()?;
    if targets.iter().any(|t| meets(t, latest.value) == Some(true)) {
        return Some("achieved");
    }
    let base = baseline(series, start)?;
    if base.reference == latest.reference {
        return Some("in-progress");
    }
    let drop = base.value - latest.value;
    let improved = drop >= rules.improvement_points
        || (base.value > 0.0 && drop / base.value * 100.0 >= rules.improvement_percent);
    Some(if improved {
        "improving"
    } else if -drop >= rules.worsening_points {
        "worsening"
    } else {
        "no-change"
    })
}

fn display(code: &str) -> &'static str {
    match code {
        "achieved" => "Achieved",
        "improving" => "Improving",
        "worsening" => "Worsening",
        "no-change" => "No Change",
        _ => "In Progress",
    }
}

/// The goal's start as µs (the end of its `startDate`), if it has one.
pub fn start_of(goal: &Value) -> Option<i64> {
    goal["startDate"]
        .as_str()
        .and_then(crate::fhir::parse_instant_range)
        .map(|r| r.end)
}

/// The Goal re-evaluated against `series` (the live scores of its measure, in time order):
/// `achievementStatus` set and the scores kept in `outcomeReference` (other references there are
/// kept; `known` are every score Observation of the measure, live or retracted, which this
/// replaces). None when the goal has no target on this measure.
pub fn evaluate(
    goal: &Value,
    code: &Value,
    rules: &GoalRules,
    series: &[Point],
    known: &HashSet<String>,
) -> Option<Value> {
    let targets = targets_for(goal, code);
    if targets.is_empty() {
        return None;
    }
    let mut out = goal.clone();
    let mut refs: Vec<Value> = goal["outcomeReference"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| !r["reference"].as_str().is_some_and(|r| known.contains(r)))
        .cloned()
        .collect();
    refs.extend(series.iter().map(|p| json!({"reference": p.reference})));
    match refs.is_empty() {
        true => out.as_object_mut()?.remove("outcomeReference"),
        false => out
            .as_object_mut()?
            .insert("outcomeReference".into(), json!(refs)),
    };
    if let Some(code) = status(&targets, rules, series, start_of(goal)) {
        out["achievementStatus"] = json!({"coding": [{"system": GOAL_ACHIEVEMENT, "code": code,
            "display": display(code)}]});
    }
    Some(out)
}

/// What `$progress` says of one goal measure.
#[derive(Debug, Clone)]
pub struct Measure {
    pub goal: String,
    pub description: Option<String>,
    pub code: Value,
    pub targets: Vec<Value>,
    pub series: Vec<Point>,
    pub baseline: Option<Point>,
    pub status: Option<String>,
    pub trend: Option<&'static str>,
    pub bands: Vec<Band>,
}

/// The direction of the last change: `down`, `up` or `flat` (None with fewer than two scores).
pub fn trend(series: &[Point]) -> Option<&'static str> {
    let [.., a, b] = series else { return None };
    Some(if b.value < a.value {
        "down"
    } else if b.value > a.value {
        "up"
    } else {
        "flat"
    })
}

/// `$progress` as Parameters: a `goal` parameter per measure, with parts goal, measure, target,
/// baseline, latest, trend, status and a `score` part per point.
pub fn parameters(measures: &[Measure]) -> Value {
    let goals: Vec<Value> = measures
        .iter()
        .map(|m| {
            let mut parts = vec![json!({"name": "goal", "valueReference": {"reference": m.goal}})];
            if let Some(d) = &m.description {
                parts.push(json!({"name": "description", "valueString": d}));
            }
            parts.push(json!({"name": "measure", "valueCoding": m.code}));
            for t in &m.targets {
                if let Some(q) = t.get("detailQuantity") {
                    parts.push(json!({"name": "target", "valueQuantity": q}));
                }
            }
            let value = |p: &Point| {
                let v = number(p.value);
                if v.is_i64() {
                    json!({"valueInteger": v})
                } else {
                    json!({"valueDecimal": v})
                }
            };
            let point = |name: &str, p: &Point| {
                let mut x = json!({"name": name, "part": [
                    {"name": "date", "valueDateTime": p.when},
                    {"name": "observation", "valueReference": {"reference": p.reference}}]});
                let mut v = value(p);
                v["name"] = json!("value");
                x["part"].as_array_mut().unwrap().insert(1, v);
                x
            };
            if let Some(b) = &m.baseline {
                let mut x = value(b);
                x["name"] = json!("baseline");
                parts.push(x);
            }
            if let Some(l) = m.series.last() {
                let mut x = value(l);
                x["name"] = json!("latest");
                parts.push(x);
            }
            if let Some(t) = m.trend {
                parts.push(json!({"name": "trend", "valueCode": t}));
            }
            if let Some(s) = &m.status {
                parts.push(json!({"name": "status", "valueCodeableConcept":
                    {"coding": [{"system": GOAL_ACHIEVEMENT, "code": s, "display": display(s)}]}}));
            }
            parts.extend(m.series.iter().map(|p| point("score", p)));
            json!({"name": "goal", "part": parts})
        })
        .collect();
    json!({"resourceType": "Parameters", "parameter": goals})
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Band fills, lightest (lowest score) first.
const BAND_FILLS: &[&str] = &[
    "#e8f5e9", "#f9fbe7", "#fff8e1", "#fff3e0", "#ffebee", "#fce4ec",
];
pub const LINE: &str = "#1565c0";
pub const TARGET: &str = "#2e7d32";

/// `$progress` as a small SVG chart: one panel per measure, with its severity bands shaded, the
/// goal targets as dashed lines and the scores over time as a line with points.
pub fn svg(measures: &[Measure]) -> String {
    const W: f64 = 480.0;
    const PANEL: f64 = 200.0;
    let (left, right, top, bottom) = (40.0, 16.0, 28.0, 28.0);
    let height = (PANEL * measures.len().max(1) as f64).max(PANEL);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="11">"#
    );
    s.push_str(r##"<rect x="0" y="0" width="100%" height="100%" fill="#ffffff"/>"##);
    if measures.is_empty() {
        let _ = write!(s, r#"<text x="{left}" y="{top}">No measured goals</text>"#);
    }
    for (i, m) in measures.iter().enumerate() {
        let y0 = i as f64 * PANEL;
        let (pw, ph) = (W - left - right, PANEL - top - bottom);
        let max_band = m.bands.iter().map(|b| b.high).fold(0.0, f64::max);
        let max_val = m.series.iter().map(|p| p.value).fold(0.0, f64::max);
        let max_target = m
            .targets
            .iter()
            .filter_map(|t| t["detailQuantity"]["value"].as_f64())
            .fold(0.0, f64::max);
        let ymax = max_band.max(max_val).max(max_target).max(1.0);
        let y = |v: f64| y0 + top + ph - v / ymax * ph;
        let title = m
            .description
            .clone()
            .or_else(|| m.code["display"].as_str().map(str::to_string))
            .unwrap_or_else(|| m.code["code"].as_str().unwrap_or_default().to_string());
        let _ = write!(
            s,
            r#"<text x="{left}" y="{}" font-weight="bold">{}</text>"#,
            y0 + 16.0,
            escape(&title)
        );
        for (k, b) in m.bands.iter().enumerate() {
            let (a, z) = (
                y(b.high + 0.5_f64.min(ymax - b.high).max(0.0)),
                y((b.low - 0.5).max(0.0)),
            );
            let _ = write!(
                s,
                r#"<rect class="band" x="{left}" y="{a:.1}" width="{pw}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
                (z - a).max(0.0),
                BAND_FILLS[k.min(BAND_FILLS.len() - 1)],
                escape(b.interpretation["code"].as_str().unwrap_or_default())
            );
        }
        let _ = write!(
            s,
            r##"<rect x="{left}" y="{}" width="{pw}" height="{ph}" fill="none" stroke="#9e9e9e"/>"##,
            y0 + top
        );
        for v in [0.0, ymax] {
            let _ = write!(
                s,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 4.0,
                y(v) + 4.0,
                number(v)
            );
        }
        for t in &m.targets {
            if let Some(v) = t["detailQuantity"]["value"].as_f64() {
                let _ = write!(
                    s,
                    r#"<line class="target" x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="{TARGET}" stroke-width="2" stroke-dasharray="6 4"/>"#,
                    left + pw,
                    y(v),
                    y(v)
                );
            }
        }
        let n = m.series.len();
        let x = |k: usize| {
            if n <= 1 {
                left + pw / 2.0
            } else {
                left + 8.0 + (pw - 16.0) * k as f64 / (n - 1) as f64
            }
        };
        if n > 1 {
            let pts: Vec<String> = m
                .series
                .iter()
                .enumerate()
                .map(|(k, p)| format!("{:.1},{:.1}", x(k), y(p.value)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline class="scores" points="{}" fill="none" stroke="{LINE}" stroke-width="3"/>"#,
                pts.join(" ")
            );
        }
        for (k, p) in m.series.iter().enumerate() {
            let _ = write!(
                s,
                r#"<circle class="score" cx="{:.1}" cy="{:.1}" r="4" fill="{LINE}"><title>{} {}</title></circle>"#,
                x(k),
                y(p.value),
                escape(&p.when),
                number(p.value)
            );
        }
        if let (Some(first), Some(last)) = (m.series.first(), m.series.last()) {
            let _ = write!(
                s,
                r#"<text x="{left}" y="{:.1}">{}</text><text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                y0 + PANEL - 8.0,
                escape(first.when.get(..10).unwrap_or(&first.when)),
                left + pw,
                y0 + PANEL - 8.0,
                escape(last.when.get(..10).unwrap_or(&last.when))
            );
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Vec<Point> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Point {
                at: i as i64,
                when: format!("2024-0{}-10", i + 1),
                value: *v,
                reference: format!("Observation/o{i}"),
            })
            .collect()
    }

    fn goal() -> Value {
        json!({"resourceType": "Goal", "target": [{"measure": {"coding": [{"system": "http://loinc.org",
            "code": "44261-6"}]}, "detailQuantity": {"value": 5, "comparator": "<"}}]})
    }

    #[test]
    fn status_over_a_scripted_series() {
        let code = json!({"system": "http://loinc.org", "code": "44261-6"});
        let g = goal();
        let targets = targets_for(&g, &code);
        let rules = GoalRules::default();
        let want = [
            (vec![19.0], "in-progress"),
            (vec![19.0, 22.0], "no-change"),
            (vec![19.0, 22.0, 13.0], "improving"),
            (vec![19.0, 22.0, 13.0, 24.0], "worsening"),
            (vec![19.0, 22.0, 13.0, 24.0, 4.0], "achieved"),
            // 50% without 5 points: 8 -> 4 meets the target anyway; 9 -> 5 is 4 points, 44%.
            (vec![9.0, 5.0], "no-change"),
            (vec![8.0, 6.0, 4.0], "achieved"),
            (vec![6.0, 3.0 + 0.5], "achieved"),
            (vec![12.0, 6.0], "improving"),
            (vec![3.0, 7.0], "no-change"),
            (vec![3.0, 8.0], "worsening"),
        ];
        for (values, code) in want {
            assert_eq!(
                status(&targets, &rules, &series(&values), None),
                Some(code),
                "{values:?}"
            );
        }
    }

    #[test]
    fn thresholds_are_data() {
        let code = json!({"system": "http://loinc.org", "code": "44261-6"});
        let g = goal();
        let strict = GoalRules {
            improvement_percent: 90.0,
            improvement_points: 10.0,
            worsening_points: 2.0,
        };
        let t = targets_for(&g, &code);
        assert_eq!(
            status(&t, &strict, &series(&[19.0, 13.0]), None),
            Some("no-change")
        );
        assert_eq!(
            status(&t, &strict, &series(&[19.0, 21.0]), None),
            Some("worsening")
        );
    }

    #[test]
    fn evaluate_keeps_other_references_and_replaces_scores() {
        let code = json!({"system": "http://loinc.org", "code": "44261-6"});
        let mut g = goal();
        g["outcomeReference"] =
            json!([{"reference": "DocumentReference/d"}, {"reference": "Observation/gone"}]);
        let s = series(&[19.0, 13.0]);
        let known: HashSet<String> = ["Observation/gone", "Observation/o0", "Observation/o1"]
            .into_iter()
            .map(String::from)
            .collect();
        let out = evaluate(&g, &code, &GoalRules::default(), &s, &known).unwrap();
        assert_eq!(
            out["outcomeReference"],
            json!([{"reference": "DocumentReference/d"}, {"reference": "Observation/o0"},
                {"reference": "Observation/o1"}])
        );
        assert_eq!(out["achievementStatus"]["coding"][0]["code"], "improving");
        let other = json!({"system": "http://loinc.org", "code": "70274-6"});
        assert!(evaluate(&g, &other, &GoalRules::default(), &s, &known).is_none());
    }

    #[test]
    fn baseline_is_the_last_score_before_the_start() {
        let s = series(&[20.0, 18.0, 10.0]);
        assert_eq!(baseline(&s, Some(2)).unwrap().value, 18.0);
        assert_eq!(baseline(&s, None).unwrap().value, 20.0);
        assert_eq!(baseline(&s, Some(-5)).unwrap().value, 20.0);
    }
}
