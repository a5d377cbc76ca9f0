//! Workload injection (DESIGN.md §5): the pure pod mutation ([`mutate`])
//! and the admission webhook that serves it ([`admission`]).

pub mod admission;
pub mod mutate;
