//! What several commands share: the generated workload's arguments.

use clap::Args;

use segq::workload::Spec;

/// The generated workload to run on (../shared/WORKLOAD.md).
#[derive(Args, Clone, Copy, Debug)]
pub struct WorkloadArgs {
    /// Number of users.
    #[arg(long, default_value_t = Spec::SMALL.users)]
    pub users: u32,
    /// Number of cohorts.
    #[arg(long, default_value_t = Spec::SMALL.cohorts)]
    pub cohorts: u32,
    /// Random seed: the same seed gives the same workload.
    #[arg(long, default_value_t = Spec::SMALL.seed)]
    pub seed: u64,
}

impl WorkloadArgs {
    pub fn spec(self) -> Spec {
        Spec {
            users: self.users,
            cohorts: self.cohorts,
            seed: self.seed,
        }
    }
}
