//! Closed sets of names (`"adamw"`, `"val_auc"`, `"mobilenet_v2"`, ...) as typed enums: the
//! [`choice!`] macro that declares one, and the [`Choice`] trait through which the command line
//! ([`crate::cli`]) lists and checks the same words without the library knowing of clap.

/// A closed set of names, declared by [`choice!`].
pub trait Choice: Copy + 'static {
    /// Every choice, in the order the documentation lists them.
    fn all() -> &'static [Self];
    /// The word configs, flags and files use.
    fn word(self) -> &'static str;
    /// Other words accepted for it.
    fn aliases(self) -> &'static [&'static str];
}

/// Declares a closed set of names: the enum, its words, and [`Choice`], serde, `FromStr` and
/// `Display` implementations that use them; `Name, "key", default = Variant { ... }` adds
/// `Default`.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $name:ident, $key:literal, default = $default:ident { $($body:tt)* }
    ) => {
        $crate::choice::choice! { $(#[$meta])* $name, $key { $($body)* } }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }
    };
    (
        $(#[$meta:meta])*
        $name:ident, $key:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every choice, in the order the documentation lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The config key (or flag) that holds this choice, for messages.
            pub const KEY: &'static str = $key;

            /// The word configs, flags and files use.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }

            /// The valid words, comma-separated, for messages.
            pub fn words() -> String {
                Self::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word $(| $alias)* => Ok($name::$variant),)+
                    _ => Err(format!("{} = \"{s}\" is not one of: {}", Self::KEY, Self::words())),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = <String as ::serde::Deserialize>::deserialize(d)?;
                word.parse().map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }

        impl $crate::choice::Choice for $name {
            fn all() -> &'static [Self] {
                Self::ALL
            }

            fn word(self) -> &'static str {
                self.as_str()
            }

            fn aliases(self) -> &'static [&'static str] {
                match self {
                    $($name::$variant => &[$($alias),*],)+
                }
            }
        }
    };
}

/// The macro, for every closed set of names (config keys, `--method` of `xray gradcam`, ...).
pub(crate) use choice;
