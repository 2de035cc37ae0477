//! Enums whose variants index arrays: metric handles by outcome, surge
//! histograms by kind of response. `closed_enum!` declares one from a
//! single list and derives the rest from it, so a new variant cannot be
//! missing from `ALL` (which sizes the arrays) and panic out of bounds, nor
//! lack a label.

/// Declares a fieldless enum, keeping its attributes and each variant's, and
/// generates `ALL`: every variant in declaration order, so `variant as usize`
/// is its index in `ALL` and in arrays of `ALL.len()` elements.
///
/// Written as `Variant => "label"` pairs, it also generates `as_str()`, the
/// label in metrics and logs.
///
/// ```ignore
/// closed_enum! {
///     /// Why the busy page was served.
///     #[derive(Debug, Clone, Copy, PartialEq, Eq)]
///     pub enum BusyReason {
///         /// No origin slot freed within origin_queue_timeout.
///         QueueTimeout => "queue_timeout",
///         WaitersFull => "waiters_full",
///     }
/// }
/// ```
///
/// Variants take no explicit discriminant, which would break the index.
macro_rules! closed_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $label:literal ),+ $(,)?
        }
    ) => {
        $crate::closed_enum::closed_enum! {
            $(#[$meta])*
            $vis enum $name {
                $( $(#[$variant_meta])* $variant ),+
            }
        }

        impl $name {
            /// The label in metrics and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )+
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order: `variant as usize` is its index.
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];
        }
    };
}

pub(crate) use closed_enum;

#[cfg(test)]
mod tests {
    closed_enum! {
        /// A test enum, with attributes as real ones have.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Weather {
            /// Documented.
            Sunny => "sunny",
            Rainy => "rainy",
            Snowy => "snowy",
        }
    }

    closed_enum! {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Unlabelled {
            First,
            Second,
        }
    }

    #[test]
    fn all_lists_every_variant_in_declaration_order_with_its_label() {
        assert_eq!(
            Weather::ALL,
            [Weather::Sunny, Weather::Rainy, Weather::Snowy],
            "ALL follows the declaration"
        );
        let labels = Weather::ALL.map(Weather::as_str);
        assert_eq!(labels, ["sunny", "rainy", "snowy"], "labels as written");
        assert!(
            Weather::ALL
                .iter()
                .enumerate()
                .all(|(i, w)| *w as usize == i),
            "a variant's discriminant is its index in ALL"
        );
        assert_eq!(
            Unlabelled::ALL,
            [Unlabelled::First, Unlabelled::Second],
            "the unlabelled form lists its variants too"
        );
    }
}
