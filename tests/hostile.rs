//! The hostile-input suite: what an attacker, a broken client or a broken
//! origin sends, over real sockets against a real digue. Each input gets a
//! clear answer and nothing breaks: no bypass of the line, no request
//! smuggled to the origin, no poisoned cache, no unbounded memory.

mod support;

#[path = "hostile/broken_origin.rs"]
mod broken_origin;
#[path = "hostile/floods.rs"]
mod floods;
#[path = "hostile/framing.rs"]
mod framing;
#[path = "hostile/poisoning.rs"]
mod poisoning;
#[path = "hostile/urls.rs"]
mod urls;
