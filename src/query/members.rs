//! Member pages in user id order, with cursors bound to one workspace and
//! one segment.

use roaring::RoaringBitmap;

use super::BitmapSource;
use crate::error::{Error, Result};
use crate::ids::UserId;
use crate::segment::chunk::Prepared;
use crate::segment::plan;
use crate::segment::Filter;
use crate::workspace::Workspace;

/// A page of members.
#[derive(Clone, Debug)]
pub struct Page {
    /// The members, in user id order.
    pub members: Vec<UserId>,
    /// Where the next page starts; `None` when this is the last.
    pub next: Option<Cursor>,
}

/// A position in a segment's member list: the first user of the next
/// page. Its text form is bound to the workspace and the segment by a
/// [`CursorScope`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The first user id of the next page.
    pub next_user: u32,
}

/// What a cursor is bound to: one workspace (its name and secret seed)
/// and one segment (the filter with its cohorts resolved to ids). The text
/// form of a cursor carries an HMAC-SHA-256 tag (128 bits) over the
/// position under a key derived from these, so a cursor made for another
/// workspace or segment, or altered, is refused.
#[derive(Clone)]
pub struct CursorScope {
    key: [u8; 32],
}

impl std::fmt::Debug for CursorScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorScope(..)")
    }
}

/// Hex digits of a cursor's text form: the position, then the tag.
const CURSOR_HEX: usize = 8 + 32;

/// HMAC-SHA-256 (RFC 2104) of the concatenated `parts`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, b) in key.iter().enumerate() {
        ipad[i] ^= b;
        opad[i] ^= b;
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner);
    outer.finalize().into()
}

impl CursorScope {
    /// The scope of `filter` (resolved: cohorts by id) in `ws`.
    pub fn new(ws: &Workspace, filter: &Filter) -> CursorScope {
        use sha2::{Digest, Sha256};
        let name = ws.name().as_bytes();
        let text = filter.to_string();
        let mut h = Sha256::new();
        h.update(b"segq member cursor\0");
        h.update(ws.users.seed().to_le_bytes());
        h.update((name.len() as u64).to_le_bytes());
        h.update(name);
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
        CursorScope {
            key: h.finalize().into(),
        }
    }

    fn tag(&self, next_user: u32) -> [u8; 16] {
        let mac = hmac_sha256(&self.key, &[b"next_user", &next_user.to_le_bytes()]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&mac[..16]);
        tag
    }

    /// The opaque text form of `c`: 40 hex digits.
    pub fn encode(&self, c: Cursor) -> String {
        let mut s = format!("{:08x}", c.next_user);
        for b in self.tag(c.next_user) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Reads a cursor made in this scope.
    pub fn decode(&self, text: &str) -> Result<Cursor> {
        let shown: String = text.chars().take(48).collect();
        let bad = |why: &str| Error::InvalidCursor(format!("{shown:?}: {why}"));
        if text.len() != CURSOR_HEX || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "expected the 40 hex digits of the X-Next-Cursor a previous page returned",
            ));
        }
        let next_user = u32::from_str_radix(&text[..8], 16).map_err(|_| bad("not hex"))?;
        let mut given = [0u8; 16];
        for (i, g) in given.iter_mut().enumerate() {
            let at = 8 + 2 * i;
            *g = u8::from_str_radix(&text[at..at + 2], 16).map_err(|_| bad("not hex"))?;
        }
        // Compared in constant time.
        let diff = self
            .tag(next_user)
            .iter()
            .zip(given.iter())
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return Err(bad(
                "it was made for another segment or another workspace, or was altered",
            ));
        }
        Ok(Cursor { next_user })
    }
}

/// The most members one page may hold.
pub const MAX_PAGE: usize = 1_000_000;

/// Up to `limit` members from `after` on (user id order). Evaluates only
/// the chunks it needs, so paging through millions of members keeps
/// memory bounded by the page.
pub fn members_page(
    ws: &Workspace,
    src: &dyn BitmapSource,
    filter: &Filter,
    from: Option<Cursor>,
    limit: usize,
) -> Result<Page> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(Error::InvalidArgument(format!(
            "limit must be 1..={MAX_PAGE}, found {limit}"
        )));
    }
    let prepared = Prepared::new(ws, &plan::plan(ws, filter)?, src)?;
    let start = from.map_or(0, |c| c.next_user);
    let chunks = ws.users.len().div_ceil(1 << 16);
    let mut out: Vec<UserId> = Vec::with_capacity(limit.min(1 << 16));
    let mut key = start >> 16;
    while key < chunks && out.len() <= limit {
        // A few chunks at a time, in parallel.
        let to = (key + 8).min(chunks);
        let part: RoaringBitmap = prepared.members_in(key, to)?;
        out.extend(part.range(start..).take(limit + 1 - out.len()).map(UserId));
        key = to;
    }
    let next = if out.len() > limit {
        let first_of_next = out[limit];
        out.truncate(limit);
        Some(Cursor {
            next_user: first_of_next.0,
        })
    } else {
        None
    };
    Ok(Page { members: out, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::Workspace;

    #[test]
    fn cursors_round_trip_and_belong_to_one_segment_of_one_workspace() {
        let a = Filter::includes(crate::ids::Partner::Amplitude, "a");
        let b = Filter::includes(crate::ids::Partner::Amplitude, "b");
        let ws = Workspace::new("acme", 7);
        let same_name_other_seed = Workspace::new("acme", 8);
        let other_name_same_seed = Workspace::new("beta", 7);
        let here = CursorScope::new(&ws, &a);
        let c = Cursor { next_user: 70_000 };
        let text = here.encode(c);
        assert_eq!(text.len(), 40);
        assert_eq!(here.decode(&text).unwrap(), c);
        for scope in [
            CursorScope::new(&ws, &b),
            CursorScope::new(&same_name_other_seed, &a),
            CursorScope::new(&other_name_same_seed, &a),
        ] {
            assert!(matches!(scope.decode(&text), Err(Error::InvalidCursor(_))));
        }
        // Another position with the same tag, or a changed tag: refused.
        let moved = format!("{:08x}{}", 70_001, &text[8..]);
        assert!(matches!(here.decode(&moved), Err(Error::InvalidCursor(_))));
        let flipped = format!(
            "{}{}",
            &text[..39],
            if text.ends_with('0') { "1" } else { "0" }
        );
        assert!(matches!(
            here.decode(&flipped),
            Err(Error::InvalidCursor(_))
        ));
        assert!(here.decode("xyz").is_err());
        // The old 24-digit form is refused with the expected form.
        let old = format!("{:016x}{:08x}", 1u64, 70_000);
        let e = here.decode(&old).unwrap_err().to_string();
        assert!(e.contains("40 hex digits"), "{e}");
    }
}
