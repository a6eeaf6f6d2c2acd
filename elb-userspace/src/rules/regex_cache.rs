//! Compiled regexes shared between rule documents. Large configurations
//! repeat the same few patterns across thousands of domains, and compiling
//! a regex costs far more than looking it up (`Pattern` clones share one
//! compiled program).
use std::{cell::RefCell, collections::HashMap};

use super::pattern::Pattern;

/// Past this many patterns the cache starts over, so patterns that left the
/// configuration cannot pile up forever.
const MAX_PATTERNS: usize = 16_384;

#[derive(Default)]
pub struct RegexCache {
    compiled: RefCell<HashMap<String, Pattern>>,
}

impl RegexCache {
    /// The cached regex for `pattern`, or `build`'s (cached on success).
    pub(super) fn get_or_build<E>(
        &self,
        pattern: &str,
        build: impl FnOnce() -> Result<Pattern, E>,
    ) -> Result<Pattern, E> {
        if let Some(regex) = self.compiled.borrow().get(pattern) {
            return Ok(regex.clone());
        }
        let regex = build()?;
        let mut compiled = self.compiled.borrow_mut();
        if compiled.len() >= MAX_PATTERNS {
            compiled.clear();
        }
        compiled.insert(pattern.to_owned(), regex.clone());
        Ok(regex)
    }

    pub fn len(&self) -> usize {
        self.compiled.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::pattern::PatternError;

    fn build(pattern: &str) -> Result<Pattern, PatternError> {
        Pattern::new(pattern)
    }

    #[test]
    fn a_pattern_is_compiled_once_and_failures_are_not_cached() {
        let cache = RegexCache::default();
        let mut builds = 0;
        for _ in 0..3 {
            cache
                .get_or_build("a+b", || {
                    builds += 1;
                    build("a+b")
                })
                .expect("valid");
        }
        assert_eq!(builds, 1);
        assert!(cache.get_or_build("(", || build("(")).is_err());
        assert_eq!(cache.len(), 1);
    }
}
