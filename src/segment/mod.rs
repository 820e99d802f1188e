//! Segment filters: the logical tree ([`ast`]), its two written forms
//! ([`json`] and [`text`]), cohort resolution, the physical plan
//! ([`plan`]), the chunk evaluator that answers queries ([`chunk`]), what
//! a count of a plan reads ([`footprint`]) and the reference evaluator the
//! others are tested against ([`reference`]).

pub mod ast;
pub mod attr;
mod buckets;
pub mod chunk;
pub mod footprint;
pub mod json;
pub mod masks;
pub mod plan;
pub mod reference;
pub mod text;

pub use ast::{AttrCmp, BucketCmp, Filter, Number, Time};

use crate::error::{Error, Result};

/// The default bound on the nodes of a segment filter (see
/// [`check_size`]); `max_filter_nodes` in `segq.json` changes it.
pub const DEFAULT_MAX_FILTER_NODES: usize = 1_000;

/// Refuses a filter of more than `limit` nodes ([`Filter::nodes`]: cohort
/// and bucket tests, `and`, `or`, `not`). Every segment query (count,
/// estimate, breakdown, members, checks) and every saved segment is bounded
/// so, which bounds the work of one query and so how long it can keep the
/// workspace's lock.
pub fn check_size(filter: &Filter, limit: usize) -> Result<()> {
    let nodes = filter.nodes();
    if nodes > limit {
        return Err(Error::FilterTooLarge { nodes, limit });
    }
    Ok(())
}
use plan::Catalog;

/// Parses a filter in either form: input whose first non-blank character is
/// `{` is JSON, anything else is the text form.
pub fn parse(input: &str) -> Result<Filter> {
    if input.trim_start().starts_with('{') {
        Ok(json::parse(input)?)
    } else {
        Ok(text::parse(input)?)
    }
}

/// Replaces every cohort value of the filter by the cohort_id it names (a
/// cohort_id of the partner, or the unique name of one of its cohorts).
/// Fails on the first value that names no cohort, or several.
pub fn resolve<C: Catalog + ?Sized>(ws: &C, filter: &Filter) -> Result<Filter> {
    Ok(match filter {
        Filter::Cohort {
            partner,
            cohort,
            includes,
        } => Filter::Cohort {
            partner: *partner,
            cohort: ws.cohort(*partner, cohort)?.0,
            includes: *includes,
        },
        Filter::Bucket(c) => Filter::Bucket(*c),
        Filter::And(c) => Filter::And(c.iter().map(|c| resolve(ws, c)).collect::<Result<_>>()?),
        Filter::Or(c) => Filter::Or(c.iter().map(|c| resolve(ws, c)).collect::<Result<_>>()?),
        Filter::Not(c) => Filter::Not(Box::new(resolve(ws, c)?)),
        Filter::Attribute { attribute, cmp } => {
            let ty = ws.attribute_type(attribute)?;
            attr::lower(attribute, cmp, ty, 0)?;
            filter.clone()
        }
        Filter::Segment { id, .. } => {
            ws.saved_filter(id)?;
            filter.clone()
        }
    })
}

/// Checks that every cohort value of the filter names exactly one cohort,
/// every attribute it tests exists and fits its comparison, and every
/// saved segment it refers to exists.
pub fn check_cohorts<C: Catalog + ?Sized>(ws: &C, filter: &Filter) -> Result<()> {
    check_leaves(ws, filter)?;
    let mut first_err = None;
    filter.for_each_cohort(&mut |partner, value, _| {
        if first_err.is_none() {
            if let Err(e) = ws.cohort(partner, value) {
                first_err = Some(e);
            }
        }
    });
    first_err.map_or(Ok(()), Err)
}

/// The attribute and segment leaves of [`check_cohorts`].
fn check_leaves<C: Catalog + ?Sized>(ws: &C, filter: &Filter) -> Result<()> {
    match filter {
        Filter::Attribute { attribute, cmp } => {
            let ty = ws.attribute_type(attribute)?;
            attr::lower(attribute, cmp, ty, 0).map(drop)
        }
        Filter::Segment { id, .. } => ws.saved_filter(id).map(drop),
        Filter::Cohort { .. } | Filter::Bucket(_) => Ok(()),
        Filter::And(c) | Filter::Or(c) => c.iter().try_for_each(|c| check_leaves(ws, c)),
        Filter::Not(c) => check_leaves(ws, c),
    }
}

/// Refuses a filter for saved segment `id` (`None`: a new one) whose
/// segment references lead back to `id` or nest more than
/// [`plan::MAX_SEGMENT_DEPTH`] deep.
pub fn check_references<C: Catalog + ?Sized>(
    ws: &C,
    id: Option<&str>,
    filter: &Filter,
) -> Result<()> {
    fn walk<C: Catalog + ?Sized>(ws: &C, id: Option<&str>, f: &Filter, depth: usize) -> Result<()> {
        match f {
            Filter::Segment { id: to, .. } => {
                if Some(to.as_str()) == id {
                    return Err(Error::InvalidArgument(format!(
                        "segment {} would refer to itself through in_segment (a cycle)",
                        crate::error::prefix(to, 64).unwrap_or(to)
                    )));
                }
                if depth >= plan::MAX_SEGMENT_DEPTH {
                    return Err(Error::InvalidArgument(format!(
                        "saved segments would refer to saved segments more than {} deep",
                        plan::MAX_SEGMENT_DEPTH
                    )));
                }
                walk(ws, id, &ws.saved_filter(to)?, depth + 1)
            }
            Filter::And(c) | Filter::Or(c) => c.iter().try_for_each(|c| walk(ws, id, c, depth)),
            Filter::Not(c) => walk(ws, id, c, depth),
            Filter::Cohort { .. } | Filter::Bucket(_) | Filter::Attribute { .. } => Ok(()),
        }
    }
    walk(ws, id, filter, 0)
}

/// `f` with every saved segment reference replaced by the segment's filter
/// (negated for `not_in_segment`), each segment met passed to `met`;
/// refused past [`plan::MAX_SEGMENT_DEPTH`] levels.
pub fn expand_references<C: Catalog + ?Sized>(
    ws: &C,
    f: &Filter,
    met: &mut dyn FnMut(&str, &Filter),
) -> Result<Filter> {
    fn go<C: Catalog + ?Sized>(
        ws: &C,
        f: &Filter,
        met: &mut dyn FnMut(&str, &Filter),
        depth: usize,
    ) -> Result<Filter> {
        Ok(match f {
            Filter::Segment { id, included } => {
                if depth >= plan::MAX_SEGMENT_DEPTH {
                    return Err(Error::InvalidArgument(format!(
                        "saved segments refer to saved segments more than {} deep",
                        plan::MAX_SEGMENT_DEPTH
                    )));
                }
                let inner = ws.saved_filter(id)?;
                met(id, &inner);
                let inner = go(ws, &inner, met, depth + 1)?;
                if *included {
                    inner
                } else {
                    inner.not()
                }
            }
            Filter::And(c) => Filter::And(
                c.iter()
                    .map(|c| go(ws, c, met, depth))
                    .collect::<Result<_>>()?,
            ),
            Filter::Or(c) => Filter::Or(
                c.iter()
                    .map(|c| go(ws, c, met, depth))
                    .collect::<Result<_>>()?,
            ),
            Filter::Not(c) => go(ws, c, met, depth)?.not(),
            Filter::Cohort { .. } | Filter::Bucket(_) | Filter::Attribute { .. } => f.clone(),
        })
    }
    go(ws, f, met, 0)
}
