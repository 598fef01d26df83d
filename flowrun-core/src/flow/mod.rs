//! The flow lifecycle: what a flow is ([`meta`]), the record its task runs
//! share ([`registry`]), a run from start to end ([`lifecycle`]), how it
//! ended ([`outcome`]), and scopes that submit tasks outside a flow run
//! ([`scope`]).

pub(crate) mod lifecycle;
pub(crate) mod meta;
pub(crate) mod outcome;
pub(crate) mod registry;
pub(crate) mod scope;
pub(crate) mod subflow;
