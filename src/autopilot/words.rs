//! Numbers in the decisions' sentences, in French (decimal comma, the
//! admin page's language) and in English (the logs').

use std::time::Duration;

use super::decisions::Loop;

/// The language of a decision's sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Fr,
    En,
}

/// One decimal at most, without a trailing zero: "1,8", "1", "0,5".
fn decimal(value: f64, lang: Lang) -> String {
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    match lang {
        Lang::Fr => text.replace('.', ","),
        Lang::En => text.to_owned(),
    }
}

/// "850 ms" under a second, "1,8 s" from there.
pub(super) fn duration(d: Duration, lang: Lang) -> String {
    if d < Duration::from_secs(1) {
        return format!("{} ms", d.as_millis());
    }
    format!("{} s", decimal(d.as_secs_f64(), lang))
}

/// A share (0.032) as "3,2 %" / "3.2 %".
pub(super) fn percent(share: f64, lang: Lang) -> String {
    format!("{} %", decimal(share * 100.0, lang))
}

/// The value a loop moves, named in both languages (French agrees in gender).
struct Noun {
    fr: &'static str,
    fr_held: &'static str,
    en: &'static str,
    unit: &'static str,
}

fn noun(loop_kind: Loop) -> Noun {
    match loop_kind {
        Loop::Concurrency => Noun {
            fr: "limite",
            fr_held: "limite maintenue à",
            en: "limit",
            unit: "",
        },
        Loop::Admission => Noun {
            fr: "débit",
            fr_held: "débit maintenu à",
            en: "rate",
            unit: "/min",
        },
    }
}

/// The cause, then the change: "latence 1,8 s > cible 1 s : débit 40 → 28/min",
/// "file vide : débit maintenu à 40/min" (French puts a space before the colon).
pub(super) fn sentence(cause: &str, loop_kind: Loop, old: u64, new: u64, lang: Lang) -> String {
    let Noun {
        fr,
        fr_held,
        en,
        unit,
    } = noun(loop_kind);
    match (lang, old == new) {
        (Lang::Fr, false) => format!("{cause} : {fr} {old} → {new}{unit}"),
        (Lang::Fr, true) => format!("{cause} : {fr_held} {new}{unit}"),
        (Lang::En, false) => format!("{cause}: {en} {old} → {new}{unit}"),
        (Lang::En, true) => format!("{cause}: {en} held at {new}{unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn french_numbers_take_a_decimal_comma() {
        assert_eq!(
            duration(Duration::from_millis(1800), Lang::Fr),
            "1,8 s",
            "comma"
        );
        assert_eq!(duration(Duration::from_secs(1), Lang::Fr), "1 s", "no ,0");
        assert_eq!(
            duration(Duration::from_millis(850), Lang::Fr),
            "850 ms",
            "ms under 1 s"
        );
        assert_eq!(percent(0.032, Lang::Fr), "3,2 %", "percent with comma");
        assert_eq!(percent(0.032, Lang::En), "3.2 %", "percent with point");
        let rate = |old, new, lang| sentence("x", Loop::Admission, old, new, lang);
        assert_eq!(rate(40, 28, Lang::Fr), "x : débit 40 → 28/min", "a move");
        assert_eq!(rate(40, 40, Lang::En), "x: rate held at 40/min", "a hold");
        let limit = sentence("x", Loop::Concurrency, 8, 8, Lang::Fr);
        assert_eq!(limit, "x : limite maintenue à 8", "feminine");
    }
}
