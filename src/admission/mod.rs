//! Admission: new sessions enter at the pace the portal can take; everyone
//! else gets a signed place in a FIFO line.
//!
//! - [`gcra`]: the admission budget, changeable live without a burst.
//! - [`token`]: signed ticket and pass cookies.
//! - [`line`]: the line of one site (in process): tickets, cursor, claims.

pub mod gcra;
pub mod line;
pub mod token;
