//! The shared cache: what may be stored ([`policy`], reading the origin's
//! fields strictly in [`directives`]), under which key
//! ([`key`]), where ([`store`]), marking it stale after an unsafe method
//! ([`invalidate`]), how a hit is answered ([`serve`], by byte ranges in [`range`]), fetching a
//! cold key once ([`coalesce`]) and filling it from the origin ([`fill`]).

pub mod coalesce;
pub mod directives;
pub mod fill;
pub mod invalidate;
pub mod key;
pub mod policy;
pub mod range;
pub mod serve;
pub mod store;
