//! Segment filters: the logical tree ([`ast`]), its two written forms
//! ([`json`] and [`text`]), cohort resolution, the physical plan
//! ([`plan`]), the chunk evaluator that answers queries ([`chunk`]), what
//! a count of a plan reads ([`footprint`]) and the reference evaluator the
//! others are tested against ([`reference`]).

pub mod ast;
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
        Filter::Attribute { .. } | Filter::Segment { .. } => return Err(filter.unsupported()),
    })
}

/// Checks that every cohort value of the filter names exactly one cohort
/// (and, until they are evaluated, that it has no custom attribute or
/// segment leaf: [`Filter::unsupported`]).
pub fn check_cohorts<C: Catalog + ?Sized>(ws: &C, filter: &Filter) -> Result<()> {
    if let Some(leaf) = filter.unsupported_leaf() {
        return Err(leaf.unsupported());
    }
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
