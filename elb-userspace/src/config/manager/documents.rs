//! What L4 services and L7 listeners share when they are rebuilt from the
//! store: each a named document under one prefix, few enough to reparse
//! whole on any change, whose bad versions leave the previous one serving.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

/// A document kept by name.
pub(super) trait Named {
    fn name(&self) -> &str;
}

impl Named for crate::config::L4Service {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for crate::config::listener::Listener {
    fn name(&self) -> &str {
        &self.name
    }
}

/// Parses every `(name, document)`: a good one keeps the `previous` Arc
/// when equal to it (so unchanged entries compare by pointer), a bad one
/// falls back to its previous version, and its error is reported only for
/// `changed` names (an entry that stays bad is not reported on every
/// change). Versions already serving come first, by name within each group,
/// so that they keep what they hold when two claim one address.
pub(super) fn candidates<'a, T, E>(
    documents: impl Iterator<Item = (&'a str, &'a str)>,
    parse: impl Fn(&str, &str) -> Result<T, E>,
    previous: &BTreeMap<String, Arc<T>>,
    changed: &BTreeSet<String>,
) -> (Vec<Arc<T>>, Vec<E>)
where
    T: Named + PartialEq,
{
    let mut errors = Vec::new();
    let mut candidates = Vec::new();
    for (name, value) in documents {
        match parse(name, value) {
            Ok(document) => candidates.push(match previous.get(name) {
                Some(current) if **current == document => Arc::clone(current),
                _ => Arc::new(document),
            }),
            Err(err) => {
                if changed.contains(name) {
                    errors.push(err);
                }
                candidates.extend(previous.get(name).cloned());
            }
        }
    }
    let serving = |document: &Arc<T>| {
        previous
            .get(document.name())
            .is_some_and(|current| Arc::ptr_eq(current, document))
    };
    // Stable sort: within each group the order stays by name.
    candidates.sort_by_key(|document| !serving(document));
    (candidates, errors)
}

/// Whether two maps hold the very same entries (names and pointers).
pub(super) fn same_entries<T>(a: &BTreeMap<String, Arc<T>>, b: &BTreeMap<String, Arc<T>>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Doc {
        name: String,
        value: String,
    }

    impl Named for Doc {
        fn name(&self) -> &str {
            &self.name
        }
    }

    fn parse(name: &str, value: &str) -> Result<Doc, String> {
        (value != "bad")
            .then(|| Doc {
                name: name.to_owned(),
                value: value.to_owned(),
            })
            .ok_or_else(|| format!("{name} is bad"))
    }

    #[test]
    fn unchanged_keep_their_arc_bad_fall_back_and_serving_come_first() {
        let (first, _) = candidates(
            [("a", "1"), ("b", "2")].into_iter(),
            parse,
            &BTreeMap::new(),
            &BTreeSet::new(),
        );
        let previous: BTreeMap<_, _> = first
            .iter()
            .map(|doc| (doc.name.clone(), Arc::clone(doc)))
            .collect();
        let changed = BTreeSet::from(["a".to_owned(), "c".to_owned()]);
        let (next, errors) = candidates(
            [("a", "3"), ("b", "2"), ("c", "bad"), ("d", "bad")].into_iter(),
            parse,
            &previous,
            &changed,
        );
        // b is serving unchanged, so it comes first; a is new; c and d have
        // no previous version; only c's error is reported (d did not change).
        let names: Vec<_> = next.iter().map(|doc| doc.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert!(Arc::ptr_eq(&next[0], &previous["b"]));
        assert_eq!(errors, ["c is bad"]);
        assert!(same_entries(&previous, &previous));
        let moved: BTreeMap<_, _> = next
            .iter()
            .map(|doc| (doc.name.clone(), Arc::clone(doc)))
            .collect();
        assert!(!same_entries(&previous, &moved));
    }
}
