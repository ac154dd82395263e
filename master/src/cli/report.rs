//! The end of a run: gathered output (`--gather`), the summary, and the
//! record of the failed targets that `@failed` reads next time.

use super::output::{self, emit, shown};
use super::{Fate, Outcome};
use spore::range::fold;
use spore::Stream;
use std::io;
use std::time::Duration;

/// Print what is printed at the end, and keep the failed targets.
pub(super) fn finish(opts: &super::Opts, outcomes: &[Outcome], took: Duration) -> io::Result<()> {
    if opts.gather {
        gathered(outcomes)?;
    }
    let many = outcomes.len() > 1;
    let err_tty = output::current().is_some_and(|c| c.err_tty);
    if opts.summary || (many && !opts.json && err_tty) {
        emit(Stream::Stderr, summary(outcomes, took).as_bytes())?;
    }
    // Labels, as Ansible's retry files keep host names: `@failed` reads
    // them back through the same inventory.
    let failed: Vec<String> = outcomes.iter().filter(|o| o.fate != Fate::Ok).map(|o| o.target.label.clone()).collect();
    if let Err(e) = spore::select::write_failed(&failed) {
        log::warn!("can't keep the failed targets for @failed: {e}");
    }
    Ok(())
}

/// Identical output with an identical status, once, under the folded list
/// of its targets, like `clush -b` and `dshbak -c`. Groups come in the
/// order of their first target.
fn gathered(outcomes: &[Outcome]) -> io::Result<()> {
    let mut groups: Vec<(&[u8], u64, i32, Vec<String>)> = Vec::new();
    for o in outcomes {
        let Some(g) = &o.gathered else { continue };
        let key = (g.bytes.as_slice(), g.dropped, o.code);
        match groups.iter_mut().find(|(b, d, c, _)| (*b, *d, *c) == key) {
            Some(group) => group.3.push(o.target.label.clone()),
            None => groups.push((key.0, key.1, key.2, vec![o.target.label.clone()])),
        }
    }
    for (bytes, dropped, code, labels) in groups {
        let mut head = format!("{} ({})", shown(&fold(&labels)), labels.len());
        if code != 0 {
            head.push_str(&format!(": exit {code}"));
        }
        let rule = "-".repeat(head.chars().count().min(78));
        let mut text = format!("{rule}\n{head}\n{rule}\n").into_bytes();
        text.extend_from_slice(bytes);
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            text.push(b'\n');
        }
        if dropped > 0 {
            text.extend_from_slice(format!("[... {dropped} more bytes not kept; --out-dir keeps all]\n").as_bytes());
        }
        emit(Stream::Stdout, &text)?;
    }
    Ok(())
}

/// `spore: 200 targets in 12.3s: 195 ok, 3 failed, 1 unreachable, 1 timed
/// out`, then each kind's folded target list.
fn summary(outcomes: &[Outcome], took: Duration) -> String {
    let kinds =
        [(Fate::Ok, "ok"), (Fate::Failed, "failed"), (Fate::Unreachable, "unreachable"), (Fate::TimedOut, "timed out")];
    let mut counts = Vec::new();
    let mut lists = String::new();
    for (fate, name) in kinds {
        let labels: Vec<String> = outcomes.iter().filter(|o| o.fate == fate).map(|o| o.target.label.clone()).collect();
        if labels.is_empty() {
            continue;
        }
        counts.push(format!("{} {name}", labels.len()));
        lists.push_str(&format!("  {name:<12} {}\n", shown(&fold(&labels))));
    }
    format!(
        "spore: {} target{} in {:.1}s: {}\n{lists}",
        outcomes.len(),
        if outcomes.len() == 1 { "" } else { "s" },
        took.as_secs_f64(),
        counts.join(", ")
    )
}
