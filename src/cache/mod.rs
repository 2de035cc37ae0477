//! The shared cache: what may be stored ([`policy`]), under which key
//! ([`key`]), where ([`store`]), how a hit is answered ([`serve`]), and fetching a cold key once ([`coalesce`]).

pub mod coalesce;
pub mod key;
pub mod policy;
pub mod serve;
pub mod store;
