//! A map kept as a vector of pairs sorted by key, for what the broker keys
//! by stream (its peers, their fds and queues, the lines it captures) or by
//! context (routes), and the dispatcher by operation name: a binary search
//! over keys that change rarely, at far less code than a `HashMap` per type
//! (~1.5 KB each in the static agent). Iteration is in key order.

/// A small map.
#[derive(Debug)]
pub(crate) struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub(crate) fn new() -> Self {
        VecMap(Vec::new())
    }

    /// Where `k` is, or where it would go.
    fn find(&self, k: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(key, _)| key.cmp(k))
    }

    /// Insert or replace; the old value.
    pub(crate) fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.find(&k) {
            Ok(i) => self.0.get_mut(i).map(|slot| std::mem::replace(&mut slot.1, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.find(k).ok().and_then(|i| self.0.get(i)).map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.find(k).ok().and_then(|i| self.0.get_mut(i)).map(|(_, v)| v)
    }

    pub(crate) fn contains_key(&self, k: &K) -> bool {
        self.find(k).is_ok()
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn retain<F: FnMut(&K, &mut V) -> bool>(&mut self, mut f: F) {
        self.0.retain_mut(|(k, v)| f(k, v));
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.0.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (K, V)> + '_ {
        self.0.drain(..)
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
