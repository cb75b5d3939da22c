//! Conversions between the public API's messages and core types, one file per type.

mod agent;
mod job;
mod node;

pub use agent::{exit_from_api, token_from_api, token_to_api};
pub use job::{job_state_from_api, job_to_api, spec_from_api, spec_to_api};
pub use node::{eligibility_from_api, health_from_api, node_info_from_hello, node_to_api};
