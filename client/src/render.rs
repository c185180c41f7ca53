//! Text output: aligned tables and the short forms people read.

use std::fmt::Write as _;

use wire::planner::{TaskStatus, TaskView};

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub fn table<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.as_ref().chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(AsRef::as_ref).collect());
    }
    out
}

/// The first 12 hex digits: enough to tell versions apart.
pub fn short_digest(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// `1.2s`, `350ms`, `3m04s`.
pub fn duration_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// What a task produced, or why it has not.
pub fn outcome(task: &TaskView) -> String {
    match (&task.result, &task.error, &task.waiting_for) {
        (Some(result), _, _) => result.to_string(),
        (None, Some(error), _) => error.clone(),
        (None, None, Some(waiting)) => format!("({waiting})"),
        _ => String::new(),
    }
}

pub fn tasks(tasks: &[TaskView]) -> String {
    let now = now_ms();
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let args = t
                .args
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(" ");
            let timing = match (t.started_at_ms, t.finished_at_ms) {
                (Some(start), Some(end)) => {
                    format!("ran {}", duration_ms(end.saturating_sub(start)))
                }
                (None, Some(end)) => format!("ended {} ago", duration_ms(now.saturating_sub(end))),
                (Some(start), None) => {
                    format!("running {}", duration_ms(now.saturating_sub(start)))
                }
                (None, None) => format!(
                    "queued {}",
                    duration_ms(now.saturating_sub(t.submitted_at_ms))
                ),
            };
            vec![
                t.id.to_string(),
                t.status.as_str().to_string(),
                t.op.clone(),
                args,
                t.worker.clone().unwrap_or_default(),
                t.digest
                    .as_deref()
                    .map(short_digest)
                    .unwrap_or_default()
                    .to_string(),
                t.attempts.to_string(),
                timing,
                outcome(t),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATUS", "OP", "ARGS", "WORKER", "DIGEST", "ATTEMPTS", "TIME", "RESULT",
        ],
        &rows,
    )
}

/// `20000 tasks: 19998 done, 2 failed`.
pub fn counts(tasks: &[TaskView]) -> String {
    let count = |status: TaskStatus| tasks.iter().filter(|t| t.status == status).count();
    let mut parts = vec![format!("{} done", count(TaskStatus::Done))];
    for status in [
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Expired,
    ] {
        let n = count(status);
        if n > 0 {
            parts.push(format!("{n} {}", status.as_str()));
        }
    }
    format!("{} tasks: {}", tasks.len(), parts.join(", "))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_durations_read_well() {
        let text = table(&["A", "LONGER"], &[vec!["wide cell", "x"], vec!["y", "z"]]);
        assert_eq!(text, "A          LONGER\nwide cell  x\ny          z\n");
        assert_eq!(duration_ms(350), "350ms");
        assert_eq!(duration_ms(1_250), "1.2s");
        assert_eq!(duration_ms(184_000), "3m04s");
        assert_eq!(short_digest("c2ac41ae0123456789"), "c2ac41ae0123");
    }
}
