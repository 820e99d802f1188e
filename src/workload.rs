//! The audience workload of ../shared/WORKLOAD.md, generated
//! deterministically from (users, cohorts, seed).
//!
//! Users `0..N` in signup order: external_id `u{n}` (one in five anonymous),
//! device id `d{n}` for everybody, alias (`email`, `u{n}@example.com`) for one
//! in ten, a uniform random bucket, and an activity weight (recency rising
//! linearly 0.5 -> 1.5 times a log-normal factor with sigma 0.8, normalised
//! to mean 1).
//!
//! Cohort `i` (amplitude, cohort_id `c{i}`) has a target density, log-uniform
//! in its band: `i < 20` large (5%-60%), `i < 60` medium (0.5%-5%), the rest
//! small (0.001%-0.5%). Two in three (`i % 3 != 2`) are behavioural: user `u`
//! is a member with probability `min(1, density * w_u^k / mean(w^k))`, k
//! drawn from {0.5, 1, 2}. Dividing by `mean(w^k)` puts the uncapped
//! expected size at the target density whatever k is; the `min(1, …)` cap
//! then trims the most active users, so dense cohorts with k = 2 come out at
//! about half their target (still inside their band). One in three is
//! clustered: a band of
//! consecutive signups of `density / 0.8` of the users, 80% of it members.
//!
//! Each cohort draws from its own RNG seeded from (seed, i), so cohorts are
//! generated in parallel and the result does not depend on the thread count.

use chrono::{TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::cohorts::Cohort;
use crate::error::{Error, Result};
use crate::ids::{CohortKey, Partner, BUCKETS};
use crate::segment::{BucketCmp, Filter};
use crate::users::NewUser;
use crate::workspace::Workspace;

/// What to generate.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Users to generate.
    pub users: u32,
    /// Cohorts to generate.
    pub cohorts: u32,
    /// The seed: the same spec generates the same workspace.
    pub seed: u64,
}

impl Spec {
    /// `default`, with users, cohorts and seed overridden by the
    /// environment variables `SEGQ_BENCH_USERS`, `SEGQ_BENCH_COHORTS` and
    /// `SEGQ_BENCH_SEED` where they are set (benchmarks).
    pub fn from_env(default: Spec) -> Spec {
        fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
            std::env::var(name).ok().and_then(|v| v.parse().ok())
        }
        Spec {
            users: var("SEGQ_BENCH_USERS").unwrap_or(default.users),
            cohorts: var("SEGQ_BENCH_COHORTS").unwrap_or(default.cohorts),
            seed: var("SEGQ_BENCH_SEED").unwrap_or(default.seed),
        }
    }

    /// 100k users, 50 cohorts: tests and the demo.
    pub const SMALL: Spec = Spec {
        users: 100_000,
        cohorts: 50,
        seed: 42,
    };
}

/// How a cohort's members were drawn.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum CohortKind {
    /// Member with probability `min(1, density * w_u^k / mean(w^k))` for activity weight `w_u`.
    Behavioural {
        /// The exponent on the activity weight (0.5, 1 or 2).
        k: f64,
    },
    /// 80% of a band of consecutive users.
    Clustered {
        /// The band's first user id.
        start: u32,
        /// The band's length in users.
        len: u32,
    },
}

/// What the generator made of one cohort.
#[derive(Clone, Debug, PartialEq)]
pub struct CohortInfo {
    /// The cohort's number `i` (its cohort_id is `c{i}`).
    pub index: u32,
    /// Its cohort_id.
    pub cohort_id: String,
    /// Its density band: `large`, `medium` or `small`.
    pub band: &'static str,
    /// The density drawn in the band (a share of the users).
    pub target_density: f64,
    /// How its members were drawn.
    pub kind: CohortKind,
    /// The members it got.
    pub members: u64,
}

/// A generated workspace and what went into it.
#[derive(Debug)]
pub struct Workload {
    /// What was generated.
    pub spec: Spec,
    /// The generated workspace.
    pub workspace: Workspace,
    /// Each cohort, in order.
    pub cohorts: Vec<CohortInfo>,
}

/// The partner of every generated cohort.
pub const PARTNER: Partner = Partner::Amplitude;

/// The cohort_id of generated cohort `i`.
pub fn cohort_id(i: u32) -> String {
    format!("c{i}")
}

fn sub_seed(seed: u64, stream: u64) -> u64 {
    // splitmix64 of the pair: independent, well-mixed seeds per stream.
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn density_band(i: u32, rng: &mut ChaCha8Rng) -> (&'static str, f64) {
    let (band, lo, hi): (_, f64, f64) = if i < 20 {
        ("large", 0.05, 0.60)
    } else if i < 60 {
        ("medium", 0.005, 0.05)
    } else {
        ("small", 0.000_01, 0.005)
    };
    let d = (lo.ln() + rng.gen::<f64>() * (hi.ln() - lo.ln())).exp();
    (band, d)
}

/// Activity weights, normalised to mean 1.
fn activity(n: u32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let lognormal = LogNormal::new(0.0, 0.8).expect("valid log-normal parameters");
    let span = f64::from(n.saturating_sub(1).max(1));
    let mut w: Vec<f64> = (0..n)
        .map(|u| (0.5 + f64::from(u) / span) * lognormal.sample(rng))
        .collect();
    let mean = w.iter().sum::<f64>() / f64::from(n.max(1));
    w.iter_mut().for_each(|x| *x /= mean);
    w.into_iter().map(|x| x as f32).collect()
}

/// Per-user membership probabilities scale: `w^k / mean(w^k)`, and its max.
struct Powered {
    scaled: Vec<f32>,
    max: f32,
}

fn powered(weights: &[f32], k: f64) -> Powered {
    let mut scaled: Vec<f32> = weights
        .iter()
        .map(|&w| f64::from(w).powf(k) as f32)
        .collect();
    let mean = scaled.iter().map(|&x| f64::from(x)).sum::<f64>() / scaled.len().max(1) as f64;
    let inv = (1.0 / mean) as f32;
    let mut max = 0f32;
    for x in &mut scaled {
        *x *= inv;
        max = max.max(*x);
    }
    Powered { scaled, max }
}

/// Members of a behavioural cohort: each user independently with
/// probability `min(1, d * scaled[u])`. For sparse cohorts, candidates are
/// drawn with the upper-bound probability `p_max` by geometric skips and
/// thinned by `p / p_max`, which is exact and visits only ~`p_max * N` users.
fn behavioural(d: f64, p: &Powered, rng: &mut ChaCha8Rng) -> RoaringBitmap {
    let n = p.scaled.len();
    let d = d as f32;
    let p_max = (d * p.max).min(1.0);
    let mut ids = Vec::new();
    if p_max > 0.25 {
        for (u, &s) in p.scaled.iter().enumerate() {
            if rng.gen::<f32>() < d * s {
                ids.push(u as u32);
            }
        }
    } else if p_max > 0.0 {
        let log_q = (1.0 - f64::from(p_max)).ln();
        let mut u: usize = 0;
        loop {
            let r: f64 = rng.gen::<f64>();
            // Users skipped before the next candidate: Geometric(p_max).
            let skip = ((1.0 - r).ln() / log_q).floor();
            if !skip.is_finite() || skip >= (n - u) as f64 {
                break;
            }
            u += skip as usize;
            if rng.gen::<f32>() * p_max < d * p.scaled[u] {
                ids.push(u as u32);
            }
            u += 1;
            if u >= n {
                break;
            }
        }
    }
    RoaringBitmap::from_sorted_iter(ids).expect("ids are generated in ascending order")
}

fn clustered(start: u32, len: u32, rng: &mut ChaCha8Rng) -> RoaringBitmap {
    RoaringBitmap::from_sorted_iter((start..start + len).filter(|_| rng.gen::<f32>() < 0.8))
        .expect("ids are generated in ascending order")
}

/// The creation time stamped on generated cohorts.
fn created_at() -> chrono::DateTime<chrono::FixedOffset> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid fixed date")
        .fixed_offset()
}

/// One generated user, in signup order.
struct GenUser {
    anonymous: bool,
    alias: bool,
    bucket: u16,
}

/// Draws the users in order (calling `each`), then their activity
/// weights, then every cohort. Shared by [`generate`] and
/// [`write_snapshot`], so both make the same workload.
fn draw(
    spec: Spec,
    mut each: impl FnMut(u32, GenUser) -> Result<()>,
) -> Result<Vec<(CohortInfo, RoaringBitmap)>> {
    if spec.users == 0 {
        return Err(Error::InvalidArgument("--users must be at least 1".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(sub_seed(spec.seed, 0));
    let n = spec.users;
    for u in 0..n {
        let anonymous = rng.gen_bool(0.2);
        let alias = rng.gen_bool(0.1);
        let bucket = rng.gen_range(0..BUCKETS);
        each(
            u,
            GenUser {
                anonymous,
                alias,
                bucket,
            },
        )?;
    }
    let weights = activity(n, &mut rng);
    let ks = [0.5, 1.0, 2.0];
    let powers: Vec<Powered> = ks.iter().map(|&k| powered(&weights, k)).collect();
    drop(weights);

    Ok((0..spec.cohorts)
        .into_par_iter()
        .map(|i| {
            let mut rng = ChaCha8Rng::seed_from_u64(sub_seed(spec.seed, 1_000 + u64::from(i)));
            let (band, d) = density_band(i, &mut rng);
            let (kind, members) = if i % 3 != 2 {
                let k = rng.gen_range(0..ks.len());
                (
                    CohortKind::Behavioural { k: ks[k] },
                    behavioural(d, &powers[k], &mut rng),
                )
            } else {
                let len = ((d / 0.8 * f64::from(n)).round() as u32).clamp(1, n);
                let start = rng.gen_range(0..=n - len);
                (
                    CohortKind::Clustered { start, len },
                    clustered(start, len, &mut rng),
                )
            };
            // Store bands of consecutive members as runs, as a real
            // engine would.
            let mut members = members;
            members.optimize();
            let info = CohortInfo {
                index: i,
                cohort_id: cohort_id(i),
                band,
                target_density: d,
                kind,
                members: members.len(),
            };
            (info, members)
        })
        .collect())
}

/// The countries of the workload's `country` attribute, most common first.
const COUNTRIES: [&str; 50] = [
    "US", "BR", "IN", "GB", "DE", "FR", "MX", "ID", "JP", "ES", "IT", "CA", "TR", "PH", "AR", "CO",
    "PL", "NL", "KR", "AU", "VN", "TH", "EG", "NG", "PK", "SA", "ZA", "CL", "PE", "MY", "RO", "SE",
    "BE", "CH", "AT", "PT", "CZ", "GR", "HU", "IL", "DK", "FI", "NO", "IE", "NZ", "SG", "UA", "KE",
    "MA", "BD",
];
/// The languages of the `language` attribute, most common first.
const LANGUAGES: [&str; 20] = [
    "en", "pt", "es", "hi", "de", "fr", "id", "ja", "it", "tr", "ar", "ko", "pl", "nl", "vi", "th",
    "ru", "ro", "sv", "uk",
];
/// Distinct values of `favourite_product`.
pub const PRODUCTS: u32 = 100_000;
/// The time `last_seen_at` counts back from: 2026-11-01T00:00:00Z.
pub const SEEN_BASE: i64 = 1_793_491_200;

/// An index drawn from a Zipf-like law over `n` ranks (rank r has weight
/// `1 / (r + 1)^s`), by inverting its cumulative weights.
fn zipf(cumulative: &[f64], rng: &mut ChaCha8Rng) -> u32 {
    let total = cumulative.last().copied().unwrap_or(1.0);
    let x = rng.gen::<f64>() * total;
    cumulative
        .partition_point(|&c| c < x)
        .min(cumulative.len() - 1) as u32
}

fn cumulative(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    (0..n)
        .map(|r| {
            acc += 1.0 / ((r + 1) as f64).powf(s);
            acc
        })
        .collect()
}

/// The users' custom attributes (see the module's notes), each drawn from
/// its own RNG stream so they are built in parallel and do not depend on
/// the thread count:
/// - `country` (95% of users): 50 codes, Zipf-like (s = 1.1), `US` first;
/// - `language` (90%): 20 codes, Zipf-like (s = 1.0);
/// - `plan` (everyone): free 70%, pro 20%, team 8%, enterprise 2%;
/// - `lifetime_spend` (decimal, 80%): 0 for half of them, else log-normal
///   around 40 (sigma 1.2), in cents;
/// - `sessions` (integer, everyone): 1 + log-normal around 12 (sigma 1.0);
/// - `last_seen_at` (time, 97%): [`SEEN_BASE`] minus an exponential
///   number of days (mean 20, at most 365), to the second;
/// - `email_subscribed` (boolean, 90%): true for 60% of them;
/// - `favourite_product` (70%): `p00000`..`p99999`, Zipf-like (s = 1.0)
///   over [`PRODUCTS`] values.
pub fn generate_attributes(spec: Spec) -> crate::attributes::Attributes {
    use crate::attributes::{AttrType, Attribute, Attributes};
    let n = spec.users;
    let rng = |k: u64| ChaCha8Rng::seed_from_u64(sub_seed(spec.seed, 500_000 + k));
    let strings = |name: &str, k: u64, values: Vec<String>, share: f64, s: f64| {
        let cum = cumulative(values.len(), s);
        let mut r = rng(k);
        let users: Vec<(u32, u32)> = (0..n)
            .filter_map(|u| {
                let v = zipf(&cum, &mut r);
                (r.gen::<f64>() < share).then_some((u, v))
            })
            .collect();
        Attribute::build_strings(name, values, users.into_iter())
    };
    let builders: Vec<Box<dyn Fn() -> Attribute + Sync>> = vec![
        Box::new(move || {
            let values = COUNTRIES.iter().map(|c| c.to_string()).collect();
            strings("country", 1, values, 0.95, 1.1)
        }),
        Box::new(move || {
            let values = LANGUAGES.iter().map(|c| c.to_string()).collect();
            strings("language", 2, values, 0.90, 1.0)
        }),
        Box::new(move || {
            let mut r = rng(3);
            let values = ["free", "pro", "team", "enterprise"]
                .map(String::from)
                .to_vec();
            let users = (0..n).map(move |u| {
                let x: f64 = r.gen();
                let v = if x < 0.70 {
                    0
                } else if x < 0.90 {
                    1
                } else if x < 0.98 {
                    2
                } else {
                    3
                };
                (u, v)
            });
            Attribute::build_strings("plan", values, users)
        }),
        Box::new(move || {
            let mut r = rng(4);
            let spend = LogNormal::new(40f64.ln(), 1.2).expect("valid parameters");
            let users = (0..n).filter_map(move |u| {
                let has = r.gen::<f64>() < 0.8;
                let zero = r.gen::<bool>();
                let cents = (spend.sample(&mut r) * 100.0).round().min(1e9) as i64;
                has.then_some((u, if zero { 0 } else { cents * 100 }))
            });
            Attribute::build_numbers("lifetime_spend", AttrType::Decimal, 0, users)
        }),
        Box::new(move || {
            let mut r = rng(5);
            let sessions = LogNormal::new(12f64.ln(), 1.0).expect("valid parameters");
            let users = (0..n).map(move |u| (u, 1 + sessions.sample(&mut r).min(1e6) as i64));
            Attribute::build_numbers("sessions", AttrType::Integer, 0, users)
        }),
        Box::new(move || {
            let mut r = rng(6);
            let users = (0..n).filter_map(move |u| {
                let has = r.gen::<f64>() < 0.97;
                let days = (-20.0 * (1.0 - r.gen::<f64>()).ln()).min(365.0);
                has.then_some((u, SEEN_BASE - (days * 86_400.0) as i64))
            });
            Attribute::build_numbers(
                "last_seen_at",
                AttrType::Time,
                SEEN_BASE - 366 * 86_400,
                users,
            )
        }),
        Box::new(move || {
            let mut r = rng(7);
            let users = (0..n).filter_map(move |u| {
                let has = r.gen::<f64>() < 0.9;
                let yes = r.gen::<f64>() < 0.6;
                has.then_some((u, yes))
            });
            Attribute::build_booleans("email_subscribed", users)
        }),
        Box::new(move || {
            let values = (0..PRODUCTS).map(|p| format!("p{p:05}")).collect();
            strings("favourite_product", 8, values, 0.70, 1.0)
        }),
    ];
    let built: Vec<Attribute> = builders.par_iter().map(|b| b()).collect();
    let mut out = Attributes::new();
    for a in built {
        out.insert(a);
    }
    out
}

fn cohort_name(info: &CohortInfo) -> String {
    format!("{} cohort {}", info.band, info.index)
}

/// The seed of a generated workspace's own buckets.
fn workspace_seed(spec: Spec) -> u64 {
    sub_seed(spec.seed, 1)
}

/// Generates the workload into a new workspace named `name`.
pub fn generate(name: &str, spec: Spec) -> Result<Workload> {
    let mut ws = Workspace::new(name, workspace_seed(spec));
    let n = spec.users as usize;
    ws.users.reserve(n, n, n / 9, n);
    let made = draw(spec, |u, g| {
        ws.users
            .create(NewUser {
                external_id: (!g.anonymous).then(|| format!("u{u}")),
                devices: vec![format!("d{u}")],
                aliases: if g.alias {
                    vec![("email".to_string(), format!("u{u}@example.com"))]
                } else {
                    Vec::new()
                },
                bucket: Some(g.bucket),
            })
            .map(drop)
    })?;
    ws.attributes = generate_attributes(spec);
    let mut infos = Vec::with_capacity(made.len());
    for (info, members) in made {
        let mut cohort = Cohort::new(CohortKey::new(PARTNER, info.cohort_id.clone()));
        cohort.name = cohort_name(&info);
        cohort.created_at = Some(created_at());
        cohort.members = members.into();
        ws.cohorts.insert(cohort)?;
        infos.push(info);
    }
    Ok(Workload {
        spec,
        workspace: ws,
        cohorts: infos,
    })
}

/// Generates the workload straight into a snapshot file on `out`, without
/// building the in-memory workspace: the way to make the large size
/// (100M users) on a machine that could not hold it twice. It is laid out
/// by the snapshot writer's [`Contents`](crate::snapshot::writer::Contents),
/// as the engine's snapshots are, and its bytes are those the engine
/// writes of [`generate`]'s workspace at seq 0 (a test compares them).
pub fn write_snapshot<W: std::io::Write>(
    name: &str,
    spec: Spec,
    out: W,
) -> Result<(W, Vec<CohortInfo>)> {
    use crate::snapshot::dict::alias_key;
    use crate::snapshot::meta::{CohortMeta, Meta};
    use crate::snapshot::writer::Contents;

    let n = spec.users;
    let mut contents = Contents::new(Meta {
        workspace: name.to_string(),
        seed: workspace_seed(spec),
        seq: 0,
        users: n,
        cohorts: Vec::new(),
        keys: Vec::new(),
        enabled_partners: Vec::new(),
        data_points: Vec::new(),
        segments: Vec::new(),
        ext: Default::default(),
        api_keys: Default::default(),
        audit: Default::default(),
        history: Default::default(),
    });
    contents.reserve_buckets(n as usize);
    let mut made = draw(spec, |u, g| {
        let id = crate::ids::UserId(u);
        contents.push_bucket(g.bucket);
        if !g.anonymous {
            contents.external_ids.push(id, format!("u{u}").as_bytes());
        }
        contents.devices.push(id, format!("d{u}").as_bytes());
        if g.alias {
            let key = alias_key("email", &format!("u{u}@example.com"));
            contents.aliases.push(id, &key);
        }
        Ok(())
    })?;
    // The catalog's order: by (partner, cohort_id).
    made.sort_by(|a, b| a.0.cohort_id.cmp(&b.0.cohort_id));
    for (info, members) in &made {
        let entry = CohortMeta::unsynced(
            PARTNER,
            info.cohort_id.clone(),
            cohort_name(info),
            Some(created_at().to_rfc3339()),
            members.len(),
        );
        contents.push_cohort(entry, |bytes| {
            members
                .serialize_into(bytes)
                .map_err(|e| Error::Internal(format!("serializing {}: {e}", info.cohort_id)))
        })?;
    }
    contents.attributes = crate::attributes::codec::encode(&generate_attributes(spec))
        .map_err(Error::Internal)?
        .into();
    let out = contents.write_to(out)?;
    Ok((out, made.into_iter().map(|(i, _)| i).collect()))
}

/// The query shapes of WORKLOAD.md, named, for a workload of `cohorts`
/// cohorts (indexes wrap when there are fewer cohorts than a shape names).
pub fn query_shapes(cohorts: u32) -> Vec<(&'static str, Filter)> {
    let m = cohorts.max(1);
    let large = |j: u32| Filter::includes(PARTNER, cohort_id(j % m.min(20)));
    let medium = |j: u32| {
        if m > 20 {
            Filter::includes(PARTNER, cohort_id(20 + j % (m.min(60) - 20)))
        } else {
            large(j)
        }
    };
    vec![
        ("one large", large(0)),
        ("two large ANDed", Filter::And(vec![large(0), large(1)])),
        (
            "three medium ORed AND NOT one large",
            Filter::And(vec![
                Filter::Or(vec![medium(0), medium(1), medium(2)]),
                large(3).not(),
            ]),
        ),
        ("five large ANDed", Filter::And((0..5).map(large).collect())),
        (
            "twenty medium ORed",
            Filter::Or((0..20).map(medium).collect()),
        ),
        (
            "mixed OR, AND NOT, random bucket",
            Filter::And(vec![
                Filter::Or(vec![large(5), medium(10), medium(25)]),
                large(2).not(),
                Filter::Bucket(BucketCmp::Between(1_000, 5_999)),
            ]),
        ),
    ]
}

/// The query shapes on custom attributes (issue shapes beside WORKLOAD.md's
/// cohort shapes), for a workload of `cohorts` cohorts with the attributes
/// of [`generate_attributes`]. "Within 30 days" is pinned to the
/// workload's date ([`SEEN_BASE`]), so counts do not drift with the clock.
pub fn attribute_shapes(cohorts: u32) -> Vec<(&'static str, Filter)> {
    use crate::segment::ast::{AttrCmp, Number, Time};
    let m = cohorts.max(1);
    let medium = |j: u32| {
        if m > 20 {
            Filter::includes(PARTNER, cohort_id(20 + j % (m.min(60) - 20)))
        } else {
            Filter::includes(PARTNER, cohort_id(j % m))
        }
    };
    let attr = |a: &str, cmp: AttrCmp| Filter::Attribute {
        attribute: a.to_string(),
        cmp,
    };
    let month_ago = Time::from_unix(SEEN_BASE - 30 * 86_400).unwrap_or(Time::EPOCH);
    vec![
        (
            "cohort AND country AND spend between",
            Filter::And(vec![
                Filter::includes(PARTNER, cohort_id(0)),
                attr("country", AttrCmp::Equals("BR".into())),
                attr(
                    "lifetime_spend",
                    AttrCmp::Between(Number::int(100), Number::int(500)),
                ),
            ]),
        ),
        (
            "three ORed AND NOT subscribed AND seen in 30 days",
            Filter::And(vec![
                Filter::Or(vec![medium(0), medium(1), medium(2)]),
                attr("email_subscribed", AttrCmp::IsTrue).not(),
                attr("last_seen_at", AttrCmp::After(month_ago)),
            ]),
        ),
        (
            "regex over 100k products",
            attr(
                "favourite_product",
                AttrCmp::MatchesRegex("^p0[0-9]{3}7$".into()),
            ),
        ),
    ]
}

/// What changes between two compactions, for benchmarks of a live
/// workspace: users created since the snapshot, and per cohort members
/// added and removed, each as a share of the users.
#[derive(Copy, Clone, Debug)]
pub struct LiveDelta {
    /// Users to create, as a share of the users.
    pub new_users: f64,
    /// Members added (and as many removed) per cohort, as a share of the users.
    pub churn: f64,
    /// The seed of the draws.
    pub seed: u64,
}

impl LiveDelta {
    /// 1% more users; in every cohort 0.1% of the users added and as many
    /// removed.
    pub const TYPICAL: LiveDelta = LiveDelta {
        new_users: 0.01,
        churn: 0.001,
        seed: 7,
    };

    /// Users to create, and adds (and removes) per cohort, for `users`.
    pub fn sizes(&self, users: u32) -> (u32, u64) {
        (
            (f64::from(users) * self.new_users) as u32,
            (f64::from(users) * self.churn).max(1.0) as u64,
        )
    }

    /// Applies the delta to `ws` (typically loaded from a snapshot) through
    /// the same operations imports use: users `bench-new-{i}` are created,
    /// then each cohort gets random members added and removed, new users
    /// among them.
    pub fn apply(&self, ws: &mut Workspace) -> Result<()> {
        let (create, churn) = self.sizes(ws.users.len());
        for i in 0..create {
            ws.users.create(NewUser {
                external_id: Some(format!("bench-new-{i}")),
                ..NewUser::default()
            })?;
        }
        let users = ws.users.len();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let now = Utc::now();
        for key in ws.cohorts.keys() {
            let ops = (0..2 * churn)
                .map(|i| crate::cohorts::MemberOp {
                    user: crate::ids::UserId(rng.gen_range(0..users)),
                    remove: i % 2 == 1,
                })
                .collect();
            let resolved = crate::cohorts::ResolvedChanges {
                ops,
                ..Default::default()
            };
            ws.apply_resolved(key.partner, &key.cohort_id, &resolved, now)?;
        }
        Ok(())
    }
}
