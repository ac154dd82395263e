//! One small sort (a heapsort: O(n log n), no allocation, not stable) in
//! place of the standard library's, whose quicksort, small-sort and merge
//! networks cost the static agent a few KB for every element type. The
//! lists sorted here are short (routes, streams) or have no equal elements
//! (the names in a directory).

/// Sort `v` ascending.
pub(crate) fn sort<T: Ord>(v: &mut [T]) {
    sort_by(v, |a, b| a < b);
}

/// Sort `v` by `lt` (is the first less than the second?), ascending.
pub(crate) fn sort_by<T, F: Fn(&T, &T) -> bool>(v: &mut [T], lt: F) {
    let less = |v: &[T], a: usize, b: usize| match (v.get(a), v.get(b)) {
        (Some(x), Some(y)) => lt(x, y),
        _ => false,
    };
    // Move the element at `root` down the max-heap `v[..end]`.
    let sift = |v: &mut [T], mut root: usize, end: usize| loop {
        let mut child = 2 * root + 1;
        if child >= end {
            return;
        }
        if child + 1 < end && less(v, child, child + 1) {
            child += 1;
        }
        if !less(v, root, child) {
            return;
        }
        v.swap(root, child);
        root = child;
    };
    let n = v.len();
    for i in (0..n / 2).rev() {
        sift(v, i, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift(v, 0, end);
    }
}

#[cfg(test)]
mod tests {
    use super::sort;

    #[test]
    fn sorts() {
        for n in 0..40u32 {
            let mut v: Vec<u32> = (0..n).map(|i| (i * 7919 + 13) % 31).collect();
            let mut want = v.clone();
            want.sort_unstable();
            sort(&mut v);
            assert_eq!(v, want);
        }
    }
}
