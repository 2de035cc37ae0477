//! `digue surge`: rehearse a Monday-morning surge (being written).
