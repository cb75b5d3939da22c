//! Agents: the one stream each agent holds to a replica, the sessions this
//! replica holds and reports to the leader (and, on the leader, which nodes
//! are alive), the dispatcher that pushes a node's assignments, and the
//! relay of live output.

pub mod dispatch;
pub mod output;
pub mod report;
pub mod reports;
pub mod sessions;
pub mod stream;
