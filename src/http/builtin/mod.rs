//! The built-in HTTP filters, on the same [`HttpFilter`](super::filter::HttpFilter) trait an
//! embedder implements; they run before any added filter.
//!
//! - [`RateLimit`]: `routes[].rate_limit`, an exact token bucket per caller (`request` phase);
//! - [`CommandList`]: `list-commands` answers cut to what the caller may run (`kea_answer`).

mod command_list;
mod rate_limit;

pub(crate) use command_list::CommandList;
pub(crate) use rate_limit::RateLimit;
