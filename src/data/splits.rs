//! The three splits of a dataset, as a closed set: the words `split.csv`, the split folders
//! and `--split` use.

crate::choice::choice! {
    /// One of the three splits.
    Split, "split" {
        /// What the model learns from.
        Train = "train",
        /// What picks the epoch, the threshold, the temperature and the guard's cut.
        Val = "val",
        /// What the reported figures come from, seen once.
        Test = "test",
    }
}

impl Split {
    /// Its place in [`Split::ALL`] (and in the `--ratios`): train 0, val 1, test 2.
    pub fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Val => 1,
            Split::Test => 2,
        }
    }

    /// The split a dataset folder's name stands for (`training`, `valid`, `dev`... too),
    /// in any case.
    pub fn of_folder(name: &str) -> Option<Split> {
        match name.to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Split::Train),
            "val" | "valid" | "validation" | "dev" => Some(Split::Val),
            "test" | "testing" => Some(Split::Test),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_indices_and_folder_names() {
        for (i, s) in Split::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(s.as_str().parse::<Split>().unwrap(), *s);
        }
        assert_eq!(Split::of_folder("Validation"), Some(Split::Val));
        assert_eq!(Split::of_folder("TESTING"), Some(Split::Test));
        assert_eq!(Split::of_folder("normal"), None);
        assert!(
            "dev".parse::<Split>().is_err(),
            "only folders take the other names"
        );
    }
}
