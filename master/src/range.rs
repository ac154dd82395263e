//! Host ranges: `web[01-03]` is `web01 web02 web03`, and back again.
//!
//! A bracket holds comma-separated numbers and spans: `db[1-3,7]` is
//! `db1 db2 db3 db7`. A span keeps the width of its lower bound, so
//! `web[08-10]` is `web08 web09 web10` and `n[9-10]` is `n9 n10`. Several
//! brackets multiply, the first one slowest: `rack[1-2]-n[01-02]` is
//! `rack1-n01 rack1-n02 rack2-n01 rack2-n02`. Brackets may sit in any hop of
//! a target path: `bastion/web[01-50]/sudo:postgres` is 50 paths.
//!
//! Ansible inventories write spans with a colon (`web[01:50]`):
//! [`expand_ansible`] takes both. Letter ranges (`[a:f]`) and strides
//! (`[1:9:2]`) are refused with a clear error rather than guessed at.
//!
//! The one other use of brackets in spore's hop syntax is an IPv6 literal
//! (`user@[::1]:22`, `[fe80::1%eth0]`): a bracket that opens a hop's host
//! (at the start of the hop or right after `user@`), holds at least two
//! colons and no comma, and closes the host, is kept as written. Ranges
//! inside IPv6 literals are not supported.
//!
//! [`fold`] is the inverse for display, like ClusterShell's `nodeset -f`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fmt::Write as _;

/// The most names one pattern may expand to (checked before allocating).
pub const MAX_TARGETS: usize = 100_000;

/// Numbers in ranges have at most this many digits (they fit a `u64`).
const MAX_DIGITS: usize = 18;

/// Why a pattern is not a valid host range. Each names the pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeError {
    /// A `[` without its `]`, or a `]` without its `[`.
    Unbalanced {
        /// The pattern as written.
        pattern: String,
    },
    /// A `[` inside a bracket.
    Nested {
        /// The pattern as written.
        pattern: String,
    },
    /// `[]`, or an empty item or bound (`[1,]`, `[1-]`).
    Empty {
        /// The pattern as written.
        pattern: String,
    },
    /// A span whose lower bound is above its upper one (`[5-1]`).
    Reversed {
        /// The pattern as written.
        pattern: String,
        /// The span as written.
        span: String,
    },
    /// An item that is not a number or a span of numbers.
    NotNumeric {
        /// The pattern as written.
        pattern: String,
        /// The item as written.
        item: String,
    },
    /// A number with more than 18 digits.
    TooLarge {
        /// The pattern as written.
        pattern: String,
        /// The number as written.
        number: String,
    },
    /// The pattern names more targets than allowed.
    TooMany {
        /// The pattern as written.
        pattern: String,
        /// How many it names (saturated at `u128::MAX`).
        count: u128,
        /// The limit.
        max: usize,
    },
}

/// A pattern cut short for an error message (a line may be megabytes).
fn shown(pattern: &str) -> String {
    const MAX: usize = 80;
    if pattern.chars().count() <= MAX {
        return format!("{pattern:?}");
    }
    let head: String = pattern.chars().take(MAX).collect();
    format!("{head:?}...")
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeError::Unbalanced { pattern } => {
                write!(f, "host range {}: unbalanced '[' and ']'", shown(pattern))
            }
            RangeError::Nested { pattern } => write!(f, "host range {}: '[' inside '[...]'", shown(pattern)),
            RangeError::Empty { pattern } => {
                write!(f, "host range {}: empty range or bound (write [1-3] or [1,3])", shown(pattern))
            }
            RangeError::Reversed { pattern, span } => {
                write!(f, "host range {}: {} is reversed (the lower bound comes first)", shown(pattern), shown(span))
            }
            RangeError::NotNumeric { pattern, item } => write!(
                f,
                "host range {}: {} is not a number or a span of numbers (only [1-3,7] forms; no letters, strides or spaces)",
                shown(pattern),
                shown(item)
            ),
            RangeError::TooLarge { pattern, number } => {
                write!(f, "host range {}: {} has more than {MAX_DIGITS} digits", shown(pattern), shown(number))
            }
            RangeError::TooMany { pattern, count, max } => {
                write!(f, "host range {}: names {count} targets, more than the limit of {max}", shown(pattern))
            }
        }
    }
}

impl std::error::Error for RangeError {}

/// One span of a bracket: `lo..=hi`, printed at least `width` digits wide.
#[derive(Debug, Clone, Copy)]
struct Span {
    lo: u64,
    hi: u64,
    width: usize,
}

/// A pattern cut into text and brackets.
enum Piece {
    Text(String),
    Set(Vec<Span>),
}

/// Expand a target pattern's ranges (`-` spans): `web[01-03]` is
/// `["web01", "web02", "web03"]`. A pattern without brackets is itself.
/// Names come in order, the first bracket slowest, duplicates dropped.
pub fn expand(pattern: &str) -> Result<Vec<String>, RangeError> {
    expand_limited(pattern, false, MAX_TARGETS)
}

/// [`expand`], also taking Ansible's colon spans: `web[01:50]`.
pub fn expand_ansible(pattern: &str) -> Result<Vec<String>, RangeError> {
    expand_limited(pattern, true, MAX_TARGETS)
}

/// [`expand`] with a limit of its own (`colon`: Ansible's `:` spans too).
/// The count is checked before anything is allocated.
pub fn expand_limited(pattern: &str, colon: bool, max: usize) -> Result<Vec<String>, RangeError> {
    let pieces = parse(pattern, colon)?;
    let count = count(&pieces);
    if count > max as u128 {
        return Err(RangeError::TooMany { pattern: pattern.to_string(), count, max });
    }
    let sets: Vec<&[Span]> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Set(s) => Some(s.as_slice()),
            Piece::Text(_) => None,
        })
        .collect();
    if sets.is_empty() {
        return Ok(vec![pattern.to_string()]);
    }
    // An odometer over the brackets: one position (span, offset) each.
    let mut pos: Vec<(usize, u64)> = vec![(0, 0); sets.len()];
    let mut out = Vec::with_capacity(count as usize);
    // Names can repeat only when a bracket's spans overlap (`[1-3,2]`)
    // or two brackets touch (`[1,12][2,22]` makes 122 twice).
    let may_repeat = sets.iter().any(|spans| overlap(spans)) || touching(&pieces);
    let mut seen = HashSet::new();
    loop {
        let mut name = String::new();
        let mut k = 0;
        for piece in &pieces {
            match piece {
                Piece::Text(t) => name.push_str(t),
                Piece::Set(spans) => {
                    let (i, off) = pos[k];
                    let s = spans[i];
                    // Writing to a String cannot fail.
                    let _ = write!(name, "{:0w$}", s.lo + off, w = s.width);
                    k += 1;
                }
            }
        }
        if !may_repeat || seen.insert(name.clone()) {
            out.push(name);
        }
        // Advance the last bracket first; carry leftwards.
        let mut k = sets.len();
        loop {
            if k == 0 {
                return Ok(out);
            }
            k -= 1;
            let (i, off) = pos[k];
            let s = sets[k][i];
            if s.lo + off < s.hi {
                pos[k] = (i, off + 1);
                break;
            }
            if i + 1 < sets[k].len() {
                pos[k] = (i + 1, 0);
                break;
            }
            pos[k] = (0, 0);
        }
    }
}

/// Do any two spans share a number?
fn overlap(spans: &[Span]) -> bool {
    let mut sorted: Vec<(u64, u64)> = spans.iter().map(|s| (s.lo, s.hi)).collect();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[1].0 <= w[0].1)
}

/// Are two brackets side by side, with no text between them?
fn touching(pieces: &[Piece]) -> bool {
    pieces.windows(2).any(|w| matches!(w, [Piece::Set(_), Piece::Set(_)]))
}

/// How many names the pieces make, saturating.
fn count(pieces: &[Piece]) -> u128 {
    let mut total: u128 = 1;
    for piece in pieces {
        if let Piece::Set(spans) = piece {
            let n = spans.iter().fold(0u128, |n, s| n.saturating_add(u128::from(s.hi - s.lo) + 1));
            total = total.saturating_mul(n);
        }
    }
    total
}

/// Cut a pattern into text and brackets, checking each bracket.
fn parse(pattern: &str, colon: bool) -> Result<Vec<Piece>, RangeError> {
    let err_pattern = || pattern.to_string();
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut host_start = true;
    let mut i = 0;
    while i < pattern.len() {
        let rest = &pattern[i..];
        let Some(c) = rest.chars().next() else { break };
        match c {
            '[' => {
                let inner_and_after = &rest[1..];
                let close =
                    inner_and_after.find(']').ok_or_else(|| RangeError::Unbalanced { pattern: err_pattern() })?;
                let inner = &inner_and_after[..close];
                if inner.contains('[') {
                    return Err(RangeError::Nested { pattern: err_pattern() });
                }
                let after = &inner_and_after[close + 1..];
                if host_start && is_ipv6_literal(inner, after) {
                    text.push('[');
                    text.push_str(inner);
                    text.push(']');
                } else {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Set(parse_set(pattern, inner, colon)?));
                }
                i += 1 + close + 1;
                host_start = false;
            }
            ']' => return Err(RangeError::Unbalanced { pattern: err_pattern() }),
            c => {
                text.push(c);
                i += c.len_utf8();
                host_start = c == '/' || c == '@';
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// Is `[inner]` an IPv6 address (`[::1]`, `[fe80::1%eth0]`) that makes
/// up the whole host (followed by nothing, `:port` or the next hop)?
fn is_ipv6_literal(inner: &str, after: &str) -> bool {
    let (addr, zone) = inner.split_once('%').unwrap_or((inner, ""));
    addr.matches(':').count() >= 2
        && addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        && zone.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && (after.is_empty() || after.starts_with(':') || after.starts_with('/'))
}

/// The spans of one bracket's inside: `1-3,7`.
fn parse_set(pattern: &str, inner: &str, colon: bool) -> Result<Vec<Span>, RangeError> {
    let empty = || RangeError::Empty { pattern: pattern.to_string() };
    if inner.is_empty() {
        return Err(empty());
    }
    let mut spans = Vec::new();
    for item in inner.split(',') {
        if item.is_empty() {
            return Err(empty());
        }
        let cut = item.find(|c| c == '-' || (colon && c == ':'));
        let (lo, hi) = match cut {
            Some(at) => (&item[..at], &item[at + 1..]),
            None => (item, item),
        };
        if lo.is_empty() || hi.is_empty() {
            return Err(empty());
        }
        let number = |s: &str| -> Result<u64, RangeError> {
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RangeError::NotNumeric { pattern: pattern.to_string(), item: item.to_string() });
            }
            if s.len() > MAX_DIGITS {
                return Err(RangeError::TooLarge { pattern: pattern.to_string(), number: s.to_string() });
            }
            s.parse::<u64>()
                .map_err(|_| RangeError::NotNumeric { pattern: pattern.to_string(), item: item.to_string() })
        };
        let (l, h) = (number(lo)?, number(hi)?);
        if l > h {
            return Err(RangeError::Reversed { pattern: pattern.to_string(), span: item.to_string() });
        }
        spans.push(Span { lo: l, hi: h, width: lo.len() });
    }
    Ok(spans)
}

/// Split a comma-separated list of patterns; commas inside `[...]` belong
/// to the range (`web[1,3],db1` is `web[1,3]` and `db1`). Empty items are
/// kept (the caller says what is wrong with them).
pub fn split_list(list: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&list[start..]);
    out
}

/// How one name folds: on its last run of digits, or not at all.
enum Shape<'a> {
    Literal(&'a str),
    Numbered { prefix: &'a str, digits: &'a str, suffix: &'a str },
}

fn shape(name: &str) -> Shape<'_> {
    // A name with a bracket or a comma would read back as a range or a
    // list: it is shown as it is.
    if name.contains(['[', ']', ',']) {
        return Shape::Literal(name);
    }
    let bytes = name.as_bytes();
    let Some(end) = bytes.iter().rposition(|b| b.is_ascii_digit()) else { return Shape::Literal(name) };
    let start = bytes[..end].iter().rposition(|b| !b.is_ascii_digit()).map_or(0, |i| i + 1);
    // ASCII digits are never part of a multi-byte character: these cuts
    // fall on character boundaries.
    let digits = &name[start..=end];
    if digits.len() > MAX_DIGITS {
        return Shape::Literal(name);
    }
    Shape::Numbered { prefix: &name[..start], digits, suffix: &name[end + 1..] }
}

/// Fold names into a short range list for display, like ClusterShell:
/// `web01 web02 web03 web07` is `web[01-03,07]`. Only the last run of
/// digits in each name folds (`bastion/web01 bastion/web02` is
/// `bastion/web[01-02]`); names that differ in anything else, or in their
/// zero padding, are separate groups, joined by `,` (a plain number as wide
/// as a padded one or wider joins it: `n[098-100]`). The result does not
/// depend on the input's order or duplicates: groups are in the natural
/// order of their first names (`n2` before `n10`), numbers within a group
/// ascending, and [`expand`] of each item of [`split_list`] gives the
/// names back in that order. Names holding `[`,
/// `]` or `,` are shown as they are.
pub fn fold(names: &[String]) -> String {
    let shapes: Vec<Shape> = names.iter().map(|n| shape(n)).collect();
    // Zero-padded widths present for each (prefix, suffix): a plain number
    // at least that wide (`10` or `100` beside `01`) prints the same padded,
    // so it joins the widest such group (`n[01-100]`, as ClusterShell).
    let mut padded: HashMap<(&str, &str), BTreeSet<usize>> = HashMap::new();
    for s in &shapes {
        if let Shape::Numbered { prefix, digits, suffix } = s {
            if digits.len() > 1 && digits.starts_with('0') {
                padded.entry((prefix, suffix)).or_default().insert(digits.len());
            }
        }
    }
    // Key: (prefix, suffix, width; 0 = unpadded); literals are their own
    // key with the width usize::MAX, so they never merge with a group.
    let mut groups: BTreeMap<(&str, &str, usize), BTreeSet<u64>> = BTreeMap::new();
    for s in &shapes {
        match s {
            Shape::Literal(name) => {
                groups.entry((name, "", usize::MAX)).or_default();
            }
            Shape::Numbered { prefix, digits, suffix } => {
                let len = digits.len();
                let width = if len > 1 && digits.starts_with('0') {
                    len
                } else {
                    padded.get(&(*prefix, *suffix)).and_then(|w| w.range(..=len).next_back().copied()).unwrap_or(0)
                };
                // At most 18 digits: always fits.
                let n = digits.parse::<u64>().unwrap_or(0);
                groups.entry((prefix, suffix, width)).or_default().insert(n);
            }
        }
    }
    // (the group's first name, its text): sorted by the first names.
    let mut items: Vec<(String, String)> = Vec::with_capacity(groups.len());
    for ((prefix, suffix, width), numbers) in groups {
        if width == usize::MAX {
            items.push((prefix.to_string(), prefix.to_string()));
            continue;
        }
        let num = |n: u64| format!("{n:0width$}");
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for n in numbers {
            match runs.last_mut() {
                Some((_, hi)) if *hi + 1 == n => *hi = n,
                _ => runs.push((n, n)),
            }
        }
        let first = format!("{prefix}{}{suffix}", runs.first().map_or(String::new(), |r| num(r.0)));
        let item = match runs.as_slice() {
            [(lo, hi)] if lo == hi => format!("{prefix}{}{suffix}", num(*lo)),
            _ => {
                let inner: Vec<String> = runs
                    .iter()
                    .map(|&(lo, hi)| if lo == hi { num(lo) } else { format!("{}-{}", num(lo), num(hi)) })
                    .collect();
                format!("{prefix}[{}]{suffix}", inner.join(","))
            }
        };
        items.push((first, item));
    }
    // Natural order, rack2-n[...] before rack10-n[...]; two groups never
    // share a first name, so the order is total.
    items.sort_by(|a, b| natural(&a.0, &b.0));
    items.into_iter().map(|(_, item)| item).collect::<Vec<_>>().join(",")
}

/// Compare texts with their runs of digits as numbers (`n2` < `n10`);
/// texts that differ only in zero padding fall back to their bytes, so the
/// order is total.
fn natural(a: &str, b: &str) -> Ordering {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < x.len() && j < y.len() {
        if x[i].is_ascii_digit() && y[j].is_ascii_digit() {
            let run = |s: &[u8], k: usize| k + s[k..].iter().take_while(|c| c.is_ascii_digit()).count();
            let (ei, ej) = (run(x, i), run(y, j));
            let trim = |s: &'_ [u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
            let (nx, ny) = (&x[i + trim(&x[i..ei])..ei], &y[j + trim(&y[j..ej])..ej]);
            let by_value = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
            if by_value != Ordering::Equal {
                return by_value;
            }
            (i, j) = (ei, ej);
        } else {
            if x[i] != y[j] {
                return x[i].cmp(&y[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (x.len() - i).cmp(&(y.len() - j)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &str) -> Vec<String> {
        expand(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn expands_ranges() {
        assert_eq!(ex("web[01-03]"), strs(&["web01", "web02", "web03"]));
        assert_eq!(ex("db[1-3,7]"), strs(&["db1", "db2", "db3", "db7"]));
        assert_eq!(ex("n[9-10]"), strs(&["n9", "n10"]));
        assert_eq!(ex("n[08-10]"), strs(&["n08", "n09", "n10"]));
        assert_eq!(ex("n[001-002]x"), strs(&["n001x", "n002x"]));
        assert_eq!(ex("plain"), strs(&["plain"]));
        assert_eq!(ex(""), strs(&[""]));
        assert_eq!(ex("[1-2]"), strs(&["1", "2"]));
        assert_eq!(ex("n[3]"), strs(&["n3"]));
        assert_eq!(ex("n[0-0]"), strs(&["n0"]));
        assert_eq!(ex("rack[1-2]-n[01-02]"), strs(&["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]));
        let paths = ex("bastion/web[01-50]/sudo:postgres");
        assert_eq!(paths.len(), 50);
        assert_eq!(paths[0], "bastion/web01/sudo:postgres");
        assert_eq!(paths[49], "bastion/web50/sudo:postgres");
        // Duplicates within or across spans are dropped, order kept.
        assert_eq!(ex("n[3,1-3,1]"), strs(&["n3", "n1", "n2"]));
        // Unicode around ranges is carried as it is.
        assert_eq!(ex("ü[1-2]é/日本"), strs(&["ü1é/日本", "ü2é/日本"]));
        assert_eq!(ex("x[1-2]y[1-2]z[1-2]").len(), 8);
        // Touching brackets can spell one name twice: once it is.
        assert_eq!(ex("n[1,12][2,22]"), strs(&["n12", "n122", "n1222"]));
        assert_eq!(ex("n[10,01-10]"), strs(&["n10", "n01", "n02", "n03", "n04", "n05", "n06", "n07", "n08", "n09"]));
    }

    #[test]
    fn ansible_colon_spans() {
        assert_eq!(expand_ansible("web[01:03]").unwrap(), strs(&["web01", "web02", "web03"]));
        assert_eq!(expand_ansible("web[1-2,4:5]").unwrap(), strs(&["web1", "web2", "web4", "web5"]));
        // The CLI form keeps ':' out of ranges: it is a hop's separator.
        assert!(matches!(expand("web[01:03]"), Err(RangeError::NotNumeric { .. })));
        // Strides and letters are refused, not guessed.
        assert!(matches!(expand_ansible("web[1:9:2]"), Err(RangeError::NotNumeric { .. })));
        assert!(matches!(expand_ansible("web[a:f]"), Err(RangeError::NotNumeric { .. })));
    }

    #[test]
    fn ipv6_literals_are_kept() {
        assert_eq!(ex("me@[::1]:22"), strs(&["me@[::1]:22"]));
        assert_eq!(ex("[fe80::1%eth0]"), strs(&["[fe80::1%eth0]"]));
        assert_eq!(ex("[::1]/web[1-2]"), strs(&["[::1]/web1", "[::1]/web2"]));
        assert_eq!(ex("b/me@[2001:db8::1]:2222/sudo"), strs(&["b/me@[2001:db8::1]:2222/sudo"]));
        // Not at a host's start, or not closing it: a range, so an error.
        assert!(expand("web[::1]").is_err());
        assert!(expand("[::1]x").is_err());
        assert_eq!(expand_ansible("[1:2]").unwrap(), strs(&["1", "2"]));
    }

    /// A pattern and the error it must make.
    type Case = (&'static str, fn(&RangeError) -> bool);

    #[test]
    fn refuses_bad_ranges() {
        let cases: &[Case] = &[
            ("web[1-3", |e| matches!(e, RangeError::Unbalanced { .. })),
            ("web1-3]", |e| matches!(e, RangeError::Unbalanced { .. })),
            ("web[1-3]]", |e| matches!(e, RangeError::Unbalanced { .. })),
            ("[", |e| matches!(e, RangeError::Unbalanced { .. })),
            ("]", |e| matches!(e, RangeError::Unbalanced { .. })),
            ("web[1[2]]", |e| matches!(e, RangeError::Nested { .. })),
            ("web[[1]]", |e| matches!(e, RangeError::Nested { .. })),
            ("web[]", |e| matches!(e, RangeError::Empty { .. })),
            ("web[1,]", |e| matches!(e, RangeError::Empty { .. })),
            ("web[,1]", |e| matches!(e, RangeError::Empty { .. })),
            ("web[1-]", |e| matches!(e, RangeError::Empty { .. })),
            ("web[-3]", |e| matches!(e, RangeError::Empty { .. })),
            ("web[5-1]", |e| matches!(e, RangeError::Reversed { .. })),
            ("web[a-c]", |e| matches!(e, RangeError::NotNumeric { .. })),
            ("web[1-2-3]", |e| matches!(e, RangeError::NotNumeric { .. })),
            ("web[ 1-3]", |e| matches!(e, RangeError::NotNumeric { .. })),
            ("web[+1]", |e| matches!(e, RangeError::NotNumeric { .. })),
            ("web[١-٣]", |e| matches!(e, RangeError::NotNumeric { .. })),
            ("web[1-99999999999999999999]", |e| matches!(e, RangeError::TooLarge { .. })),
            ("web[1-100001]", |e| matches!(e, RangeError::TooMany { count: 100_001, .. })),
            ("a[1-1000]b[1-1000]", |e| matches!(e, RangeError::TooMany { count: 1_000_000, .. })),
            // Far beyond any memory: refused from the count, at once.
            ("a[0-999999999999999999]b[0-999999999999999999]c[0-999999999999999999]", |e| {
                matches!(e, RangeError::TooMany { .. })
            }),
        ];
        for (p, ok) in cases {
            let e = expand(p).expect_err(p);
            assert!(ok(&e), "{p}: {e:?}");
            let msg = e.to_string();
            assert!(msg.starts_with("host range "), "{msg}");
        }
        // The limit itself is fine.
        assert_eq!(expand("n[1-100000]").unwrap().len(), MAX_TARGETS);
        assert_eq!(
            expand_limited("n[1-3]", false, 2).unwrap_err().to_string(),
            "host range \"n[1-3]\": names 3 targets, more than the limit of 2"
        );
        // A huge pattern is cut short in the message.
        let long = format!("{}[", "x".repeat(1 << 20));
        assert!(expand(&long).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn splits_lists() {
        assert_eq!(split_list("web[1,3],db1"), vec!["web[1,3]", "db1"]);
        assert_eq!(split_list("a,,b"), vec!["a", "", "b"]);
        assert_eq!(split_list(""), vec![""]);
        assert_eq!(split_list("x]y,z"), vec!["x]y", "z"]);
    }

    fn fo(v: &[&str]) -> String {
        fold(&strs(v))
    }

    #[test]
    fn folds_names() {
        assert_eq!(fo(&["web01", "web02", "web03", "web07"]), "web[01-03,07]");
        assert_eq!(fo(&["web07", "web03", "web01", "web02", "web01"]), "web[01-03,07]");
        assert_eq!(fo(&["bastion/web01", "bastion/web02"]), "bastion/web[01-02]");
        assert_eq!(fo(&["web1", "web2", "db1"]), "db1,web[1-2]");
        assert_eq!(fo(&["web7"]), "web7");
        assert_eq!(fo(&["local"]), "local");
        assert_eq!(fo(&[]), "");
        assert_eq!(fo(&["web1", "web10", "web01"]), "web[01,10],web1");
        assert_eq!(fo(&["n9", "n10", "n11"]), "n[9-11]");
        assert_eq!(fo(&["rack10-n1", "rack2-n1", "rack2-n2", "rack1-n1"]), "rack1-n1,rack2-n[1-2],rack10-n1");
        assert_eq!(fo(&["b", "a10", "a9x", "a"]), "a,a9x,a10,b");
        assert_eq!(fo(&["n998", "n999", "n1000", "n001"]), "n[001,998-1000]");
        assert_eq!(fo(&["n5", "n05", "n100", "n0100"]), "n[05,100],n5,n0100");
        assert_eq!(fo(&["rack1-n01", "rack1-n02", "rack2-n01"]), "rack1-n[01-02],rack2-n01");
        assert_eq!(fo(&["a1.example.com", "a2.example.com"]), "a[1-2].example.com");
        assert_eq!(fo(&["me@[::1]:22", "me@[::1]:23"]), "me@[::1]:22,me@[::1]:23");
        assert_eq!(fo(&["x9999999999999999999999"]), "x9999999999999999999999");
        assert_eq!(fo(&["é1", "é2"]), "é[1-2]");
    }

    #[test]
    fn natural_order() {
        let mut v = ["n10", "n9", "n09", "a", "n", "n9a", "n010", "m100", "n1x2", "n1x10"];
        v.sort_by(|a, b| natural(a, b));
        assert_eq!(v, ["a", "m100", "n", "n1x2", "n1x10", "n09", "n9", "n9a", "n010", "n10"]);
    }

    /// A small deterministic generator (xorshift), no crate needed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_name(r: &mut Rng) -> String {
        const PREFIXES: &[&str] = &["web", "db", "bastion/web", "rack1-n", "n", "", "é", "a.b/", "x0y"];
        const SUFFIXES: &[&str] = &["", ".example.com", "/sudo:postgres", "-a", "ü"];
        let prefix = PREFIXES[r.below(PREFIXES.len() as u64) as usize];
        let suffix = SUFFIXES[r.below(SUFFIXES.len() as u64) as usize];
        let top = if r.below(4) == 0 { 2000 } else { 30 };
        let n = r.below(top);
        let digits = match r.below(4) {
            0 => format!("{n:02}"),
            1 => format!("{n:03}"),
            2 => String::new(),
            _ => n.to_string(),
        };
        format!("{prefix}{digits}{suffix}")
    }

    #[test]
    fn fold_round_trips() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..2000 {
            let len = r.below(40) as usize;
            let names: Vec<String> = (0..len).map(|_| random_name(&mut r)).collect();
            let folded = fold(&names);
            let mut back = Vec::new();
            if !folded.is_empty() {
                for item in split_list(&folded) {
                    back.extend(expand(item).unwrap_or_else(|e| panic!("round {round}: {folded}: {e}")));
                }
            }
            let want: BTreeSet<&String> = names.iter().collect();
            let got: BTreeSet<&String> = back.iter().collect();
            assert_eq!(got, want, "round {round}: {names:?} folded to {folded}");
            assert_eq!(back.len(), want.len(), "round {round}: duplicates in {folded}");
            // The same text whatever the order, and stable under a round trip.
            let mut shuffled = names.clone();
            shuffled.reverse();
            assert_eq!(fold(&shuffled), folded);
            assert_eq!(fold(&back), folded, "round {round}");
        }
    }
}
