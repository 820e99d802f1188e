//! What several commands share: the generated workload's arguments.

use clap::Args;

use segq::workload::Spec;

/// The generated workload to run on (../shared/WORKLOAD.md). Users and
/// cohorts are `None` when not given, so that a command can tell a value
/// given from its default (`segq bench` measures an existing snapshot as
/// it is unless they are given); [`WorkloadArgs::spec`] fills in
/// [`Spec::SMALL`], and a command with other defaults says so with
/// `mut_arg` on the help text and [`WorkloadArgs::spec_or`].
#[derive(Args, Clone, Copy, Debug)]
pub struct WorkloadArgs {
    /// Number of users (`500k`, `10M` also work).
    #[arg(
        long,
        value_parser = users_value,
        help = format!(
            "Number of users (`500k`, `10M` also work) [default: {}]",
            Spec::SMALL.users
        )
    )]
    pub users: Option<u32>,
    /// Number of cohorts.
    #[arg(long, help = format!("Number of cohorts [default: {}]", Spec::SMALL.cohorts))]
    pub cohorts: Option<u32>,
    /// Random seed: the same seed gives the same workload.
    #[arg(long, default_value_t = Spec::SMALL.seed)]
    pub seed: u64,
}

impl WorkloadArgs {
    /// The workload, [`Spec::SMALL`] where users or cohorts are not given.
    pub fn spec(self) -> Spec {
        self.spec_or(Spec::SMALL)
    }

    /// The workload, `default`'s users and cohorts where they are not
    /// given (the seed always has its value).
    pub fn spec_or(self, default: Spec) -> Spec {
        Spec {
            users: self.users.unwrap_or(default.users),
            cohorts: self.cohorts.unwrap_or(default.cohorts),
            seed: self.seed,
        }
    }
}

/// A number of users: digits (underscores allowed), optionally followed by
/// `k` or `M`; at least 1.
pub fn users_value(s: &str) -> Result<u32, String> {
    let bad = || "expected a number of users of at least 1, such as 1000000 or 10M".to_string();
    let t = s.trim().replace('_', "");
    let (digits, scale) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1_000u64),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1_000_000u64),
        _ => (&t[..], 1u64),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(bad)?;
    match u32::try_from(n) {
        Ok(0) => Err(bad()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("at most {} users", u32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        workload: WorkloadArgs,
    }

    fn parse(args: &[&str]) -> Result<WorkloadArgs, clap::Error> {
        Cmd::try_parse_from([&["cmd"], args].concat()).map(|c| c.workload)
    }

    #[test]
    fn defaults_are_the_small_workload_unless_given() {
        let w = parse(&[]).unwrap();
        assert_eq!((w.users, w.cohorts), (None, None));
        assert_eq!(w.spec(), Spec::SMALL);
        let other = Spec {
            users: 1_000_000,
            cohorts: 200,
            seed: 1,
        };
        assert_eq!(w.spec_or(other), Spec { seed: 42, ..other });
        let w = parse(&["--users", "500k", "--cohorts", "7", "--seed", "3"]).unwrap();
        let given = Spec {
            users: 500_000,
            cohorts: 7,
            seed: 3,
        };
        assert_eq!(w.spec(), given);
        assert_eq!(w.spec_or(other), given);
    }

    #[test]
    fn users_take_k_and_m_suffixes() {
        for (text, n) in [
            ("10M", 10_000_000),
            ("500k", 500_000),
            ("2K", 2_000),
            ("1_000_000", 1_000_000),
            ("3000", 3_000),
        ] {
            assert_eq!(users_value(text), Ok(n), "{text}");
        }
        for text in ["0", "0k", "", "k", "1.5M", "-3", "5000M", "x"] {
            assert!(users_value(text).is_err(), "{text}");
        }
        assert!(parse(&["--users", "0"]).is_err());
    }
}
