//! The alias index key: an owned (alias_label, alias_name) pair that can be
//! looked up by a borrowed pair without allocating.

use std::hash::{Hash, Hasher};

use hashbrown::Equivalent;

/// An owned alias, hashed as its label then its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AliasKey {
    label: Box<str>,
    name: Box<str>,
}

impl AliasKey {
    pub(crate) fn new(label: String, name: String) -> Self {
        AliasKey {
            label: label.into(),
            name: name.into(),
        }
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Hash for AliasKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        AliasQuery(&self.label, &self.name).hash(state)
    }
}

/// A borrowed alias, hashed exactly like [`AliasKey`].
#[derive(Hash)]
pub(crate) struct AliasQuery<'a>(pub(crate) &'a str, pub(crate) &'a str);

impl Equivalent<AliasKey> for AliasQuery<'_> {
    fn equivalent(&self, key: &AliasKey) -> bool {
        *key.label == *self.0 && *key.name == *self.1
    }
}
