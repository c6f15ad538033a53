//! Where training items come from, read a block at a time so that a training run never holds
//! the whole data set: [`TrainSource`] describes every item cheaply (id, how many captions and
//! turns) and hands out whole blocks of items on demand.
//!
//! Two sources: the in-memory [`TrainData`] (tests, small sets; one block) and
//! [`ParquetSource`], which reads the ingest and embed stages' tables lazily. A block of a
//! `ParquetSource` is the training items of one row group of `embeddings.parquet` (the widest
//! table: with Skip-Thought per-turn vectors ≈ 200 KB an image), with their pictures read from
//! the image tables' row groups that hold them. Only the vector columns the variant uses are
//! read (the per-turn vectors only for the recurrent variant).

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use chatpainter_formats::embeddings::{Columns, ProjectedReader};
use rayon::prelude::*;

use crate::TrainError;
use crate::objects::ObjectTargets;
use chatpainter_model::Variant;
use chatpainter_model::dataset::{Geometry, StoredImage, TrainData, TrainItem, stored_image};

/// What the loader knows of an item without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemMeta {
    pub image_id: i64,
    /// Caption vectors (at least one).
    pub captions: usize,
    /// Per-turn vectors.
    pub turns: usize,
    /// Whether the whole-dialogue vector is there (only known when the source reads it).
    pub dialogue: bool,
}

/// Vector widths of a source (0: none of that kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Widths {
    pub caption: usize,
    pub dialogue: usize,
    pub turn: usize,
}

/// A training set read in blocks. Items are numbered `0..len()` in image-id order; blocks are
/// consecutive ranges of them covering every item.
pub trait TrainSource: Sync {
    fn geometry(&self) -> Geometry;
    fn widths(&self) -> Widths;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn meta(&self, item: usize) -> ItemMeta;
    /// The item ranges that are read as a unit, in order.
    fn blocks(&self) -> Vec<Range<usize>>;
    /// The items of block `block`, in item order.
    ///
    /// # Errors
    /// Read or decode failures naming the file and the image.
    fn read_block(&self, block: usize) -> Result<Vec<TrainItem>, TrainError>;
    /// As [`Self::read_block`] without the pictures (their `image` is empty): text statistics.
    ///
    /// # Errors
    /// As [`Self::read_block`].
    fn read_block_vectors(&self, block: usize) -> Result<Vec<TrainItem>, TrainError> {
        self.read_block(block)
    }
    /// Checks what can be checked without reading every item.
    ///
    /// # Errors
    /// [`TrainError::Data`] naming the offending image.
    fn validate(&self) -> Result<(), TrainError>;

    /// Width of the dialogue input the variant uses (whole vector or per-turn vector).
    fn dialogue_width(&self, variant: Variant) -> usize {
        let w = self.widths();
        match variant {
            Variant::Stackgan => 0,
            Variant::ChatpainterNonrecurrent => w.dialogue,
            Variant::ChatpainterRecurrent => w.turn,
        }
    }

    /// Most turns of any item (the padded length of a recurrent batch).
    fn max_turns(&self) -> usize {
        (0..self.len())
            .map(|i| self.meta(i).turns)
            .max()
            .unwrap_or(0)
    }

    /// Checks that every item has the dialogue input the variant needs.
    ///
    /// # Errors
    /// [`TrainError::Data`] naming the first image without it.
    fn check_variant(&self, variant: Variant) -> Result<(), TrainError> {
        check_items_have(self, variant)
    }

    /// The split's annotated objects (the auxiliary object loss's targets), when the data has
    /// them.
    fn objects(&self) -> Option<&ObjectTargets> {
        None
    }
}

/// Checks that every item of `source` has the dialogue input `variant` needs.
fn check_items_have<S: TrainSource + ?Sized>(
    source: &S,
    variant: Variant,
) -> Result<(), TrainError> {
    let missing = (0..source.len())
        .map(|i| source.meta(i))
        .find(|m| match variant {
            Variant::Stackgan => false,
            Variant::ChatpainterNonrecurrent => !m.dialogue,
            Variant::ChatpainterRecurrent => m.turns == 0,
        });
    match missing {
        Some(m) => Err(TrainError::Data(format!(
            "image {}: no dialogue {} for variant {}",
            m.image_id,
            if variant == Variant::ChatpainterRecurrent {
                "turn vectors"
            } else {
                "vector"
            },
            variant.name()
        ))),
        None => Ok(()),
    }
}

/// Resident bytes of loaded items: pixels (or PNG) and vectors.
pub fn item_bytes(item: &TrainItem) -> usize {
    let image = match &item.image {
        StoredImage::Rgb(v) | StoredImage::Png(v) => v.len(),
    };
    let floats: usize = item.captions.iter().map(Vec::len).sum::<usize>()
        + item.dialogue.as_ref().map_or(0, Vec::len)
        + item.turns.iter().map(Vec::len).sum::<usize>();
    image + floats * std::mem::size_of::<f32>()
}

/// The in-memory set is one block.
impl TrainSource for TrainData {
    fn geometry(&self) -> Geometry {
        self.geometry
    }
    fn widths(&self) -> Widths {
        Widths {
            caption: self.caption_dim,
            dialogue: self.dialogue_dim,
            turn: self.turn_dim,
        }
    }
    fn len(&self) -> usize {
        self.items.len()
    }
    fn meta(&self, item: usize) -> ItemMeta {
        let it = &self.items[item];
        ItemMeta {
            image_id: it.image_id,
            captions: it.captions.len(),
            turns: it.turns.len(),
            dialogue: it.dialogue.is_some(),
        }
    }
    fn blocks(&self) -> Vec<Range<usize>> {
        std::iter::once(0..self.items.len()).collect()
    }
    fn read_block(&self, block: usize) -> Result<Vec<TrainItem>, TrainError> {
        match block {
            0 => Ok(self.items.clone()),
            _ => Err(TrainError::Internal(format!(
                "block {block} of a one-block set"
            ))),
        }
    }
    fn validate(&self) -> Result<(), TrainError> {
        Ok(TrainData::validate(self)?)
    }
}

/// One block of a [`ParquetSource`]: a row group of `embeddings.parquet` and the items in it.
#[derive(Debug, Clone)]
struct ParquetBlock {
    group: usize,
    items: Range<usize>,
}

/// The training split read lazily from the ingest stage's image tables and the embed stage's
/// `embeddings.parquet`. Opening reads the image ids of the image tables and the caption counts
/// (plus, for the non-recurrent variant, the dialogue vectors' presence) of the embeddings
/// table, one row group at a time; nothing else stays in memory.
pub struct ParquetSource {
    geometry: Geometry,
    widths: Widths,
    /// The variant whose vectors are read.
    variant: Variant,
    split: String,
    embeddings: ProjectedReader,
    items: Vec<ItemMeta>,
    blocks: Vec<ParquetBlock>,
    /// Image tables of the split at the geometry's load size.
    tables: Vec<PathBuf>,
    /// image id → (table, row group).
    pictures: HashMap<i64, (usize, usize)>,
    /// The split's boxes from the ingest stage's `objects.parquet`, when it wrote one.
    objects: Option<ObjectTargets>,
}

impl ParquetSource {
    /// Opens split `split` of an ingest stage directory (the image tables of the geometry's load
    /// size named in its manifest) and an embed stage directory (`embeddings.parquet`), reading
    /// the vectors `variant` uses. Images without embeddings or without a picture are left out
    /// (and counted in a warning); the result must not be empty. The split's object boxes are
    /// read too when the ingest stage wrote `objects.parquet` (small: boxes only).
    ///
    /// # Errors
    /// Any read failure, naming the file; [`TrainError::Data`] for a contract breach (rows not
    /// in image-id order, an image without captions, no training image at all).
    pub fn open(
        ingest_dir: &Path,
        embed_dir: &Path,
        split: &str,
        geometry: Geometry,
        variant: Variant,
    ) -> Result<Self, TrainError> {
        let tables =
            chatpainter_formats::ingested::image_tables(ingest_dir, split, geometry.load as u32)?;
        let pictures = picture_index(&tables, geometry)?;
        let embeddings_path = embed_dir.join("embeddings.parquet");
        let columns = Columns {
            captions: true,
            dialogue: variant == Variant::ChatpainterNonrecurrent,
            turns: variant == Variant::ChatpainterRecurrent,
        };
        let embeddings = ProjectedReader::open(&embeddings_path, columns)?;
        // The index pass needs the caption counts and the dialogue's presence, not the turns.
        let index = ProjectedReader::open(
            &embeddings_path,
            Columns {
                turns: false,
                ..columns
            },
        )?;
        let (items, blocks) = item_index(&index, split, &pictures)?;
        let dd = embeddings.dialogue_encoder.dim;
        let widths = Widths {
            caption: embeddings.caption_encoder.dim,
            dialogue: if items.iter().any(|m| m.dialogue) {
                dd
            } else {
                0
            },
            turn: if items.iter().any(|m| m.turns > 0) {
                dd
            } else {
                0
            },
        };
        let source = Self {
            geometry,
            widths,
            variant,
            split: split.to_string(),
            embeddings,
            items,
            blocks,
            tables,
            pictures,
            objects: ObjectTargets::open(ingest_dir, split)?,
        };
        source.validate()?;
        Ok(source)
    }

    /// The block's rows of `embeddings.parquet`, in item order.
    fn block_rows(
        &self,
        block: usize,
    ) -> Result<Vec<chatpainter_formats::embeddings::ImageEmbeddings>, TrainError> {
        let b = self.blocks.get(block).ok_or_else(|| {
            TrainError::Internal(format!("block {block} of {}", self.blocks.len()))
        })?;
        let ids: BTreeSet<i64> = self.items[b.items.clone()]
            .iter()
            .map(|m| m.image_id)
            .collect();
        let mut rows = Vec::with_capacity(ids.len());
        self.embeddings.for_each_in_group(b.group, |row, _| {
            if row.split == self.split && ids.contains(&row.image_id) {
                rows.push(row);
            }
            Ok(())
        })?;
        let metas = &self.items[b.items.clone()];
        let same = rows.len() == metas.len()
            && rows
                .iter()
                .zip(metas)
                .all(|(r, m)| r.image_id == m.image_id && r.captions.len() == m.captions);
        if !same {
            return Err(TrainError::Data(format!(
                "{}: row group {} changed while training (images {:?}…)",
                self.embeddings_path().display(),
                b.group,
                metas.first().map(|m| m.image_id)
            )));
        }
        Ok(rows)
    }

    fn embeddings_path(&self) -> PathBuf {
        self.embeddings.path().to_path_buf()
    }

    /// The pictures of `ids`, each image table row group read once.
    fn pictures_of(&self, ids: &[i64]) -> Result<HashMap<i64, StoredImage>, TrainError> {
        let mut by_group: HashMap<(usize, usize), BTreeSet<i64>> = HashMap::new();
        for id in ids {
            let at = self.pictures.get(id).ok_or_else(|| {
                TrainError::Internal(format!("image {id} has no picture location"))
            })?;
            by_group.entry(*at).or_default().insert(*id);
        }
        let mut groups: Vec<_> = by_group.into_iter().collect();
        groups.sort_by_key(|(at, _)| *at);
        let mut out = HashMap::with_capacity(ids.len());
        for ((t, g), wanted) in groups {
            let path = &self.tables[t];
            let rows = chatpainter_formats::ingested::read_image_group(path, g)?;
            let decoded: Vec<(i64, StoredImage)> = rows
                .into_par_iter()
                .filter(|(id, _)| wanted.contains(id))
                .map(|(id, png)| Ok((id, stored_image(path, id, png, self.geometry)?)))
                .collect::<Result<_, TrainError>>()?;
            out.extend(decoded);
        }
        Ok(out)
    }
}

impl TrainSource for ParquetSource {
    fn geometry(&self) -> Geometry {
        self.geometry
    }
    fn widths(&self) -> Widths {
        self.widths
    }
    fn len(&self) -> usize {
        self.items.len()
    }
    fn meta(&self, item: usize) -> ItemMeta {
        self.items[item]
    }
    fn blocks(&self) -> Vec<Range<usize>> {
        self.blocks.iter().map(|b| b.items.clone()).collect()
    }
    fn read_block(&self, block: usize) -> Result<Vec<TrainItem>, TrainError> {
        let rows = self.block_rows(block)?;
        let ids: Vec<i64> = rows.iter().map(|r| r.image_id).collect();
        let mut pictures = self.pictures_of(&ids)?;
        rows.into_iter()
            .map(|r| {
                let image = pictures.remove(&r.image_id).ok_or_else(|| {
                    TrainError::Data(format!(
                        "image {}: missing from its image table row group",
                        r.image_id
                    ))
                })?;
                Ok(TrainItem {
                    image_id: r.image_id,
                    image,
                    captions: r.captions,
                    dialogue: r.dialogue,
                    turns: r.turns,
                })
            })
            .collect()
    }
    fn read_block_vectors(&self, block: usize) -> Result<Vec<TrainItem>, TrainError> {
        Ok(self
            .block_rows(block)?
            .into_iter()
            .map(|r| TrainItem {
                image_id: r.image_id,
                image: StoredImage::Rgb(Vec::new()),
                captions: r.captions,
                dialogue: r.dialogue,
                turns: r.turns,
            })
            .collect())
    }
    fn check_variant(&self, variant: Variant) -> Result<(), TrainError> {
        // Another variant's dialogue vectors were not read: its batches would be silently empty.
        if variant != self.variant {
            return Err(TrainError::Config(format!(
                "the training data was opened for variant {}, not {}",
                self.variant.name(),
                variant.name()
            )));
        }
        check_items_have(self, variant)
    }
    fn objects(&self) -> Option<&ObjectTargets> {
        self.objects.as_ref()
    }
    fn validate(&self) -> Result<(), TrainError> {
        if self.items.is_empty() {
            return Err(TrainError::Data(format!(
                "the training set is empty: no image of split `{}` has both embeddings and a {}-px picture",
                self.split, self.geometry.load
            )));
        }
        if self.widths.caption == 0 {
            return Err(TrainError::Data("caption vectors have width 0".into()));
        }
        if let Some(m) = self.items.iter().find(|m| m.captions == 0) {
            return Err(TrainError::Data(format!(
                "image {}: no caption vectors",
                m.image_id
            )));
        }
        Ok(())
    }
}

/// Where each picture is: image id → (table, row group), over the split's image tables.
fn picture_index(
    tables: &[PathBuf],
    geometry: Geometry,
) -> Result<HashMap<i64, (usize, usize)>, TrainError> {
    let mut pictures = HashMap::new();
    for (t, path) in tables.iter().enumerate() {
        let groups = chatpainter_formats::ingested::image_ids_by_group(path, geometry.load as u32)?;
        for (g, ids) in groups.into_iter().enumerate() {
            pictures.extend(ids.into_iter().map(|id| (id, (t, g))));
        }
    }
    Ok(pictures)
}

/// The split's items (those with a picture), in file order, and the blocks they form (one per
/// embeddings row group); refuses rows out of image-id order.
fn item_index(
    index: &ProjectedReader,
    split: &str,
    pictures: &HashMap<i64, (usize, usize)>,
) -> Result<(Vec<ItemMeta>, Vec<ParquetBlock>), TrainError> {
    let (mut items, mut blocks, mut no_picture) = (Vec::<ItemMeta>::new(), Vec::new(), 0usize);
    for group in 0..index.row_groups() {
        let first = items.len();
        index.for_each_in_group(group, |row, n_turns| {
            if row.split != split {
                return Ok(());
            }
            if !pictures.contains_key(&row.image_id) {
                no_picture += 1;
                return Ok(());
            }
            items.push(ItemMeta {
                image_id: row.image_id,
                captions: row.captions.len(),
                turns: n_turns,
                dialogue: row.dialogue.is_some(),
            });
            Ok(())
        })?;
        if items.len() > first {
            blocks.push(ParquetBlock {
                group,
                items: first..items.len(),
            });
        }
    }
    if let Some(w) = items.windows(2).find(|w| w[0].image_id >= w[1].image_id) {
        return Err(TrainError::Data(format!(
            "{}: rows of split `{split}` are not in image-id order (image {} after {}); re-run embed",
            index.path().display(),
            w[1].image_id,
            w[0].image_id
        )));
    }
    if no_picture > 0 {
        tracing::warn!(
            split,
            no_picture,
            kept = items.len(),
            "records left out of training"
        );
    }
    Ok((items, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpainter_model::{StoredImage, TrainItem};

    #[test]
    fn a_variant_needs_its_dialogue_inputs() {
        let load = Geometry::STAGE1.load;
        let item = TrainItem {
            image_id: 44,
            image: StoredImage::Rgb(vec![0; load * load * 3]),
            captions: vec![vec![1.0; 4]],
            dialogue: None,
            turns: Vec::new(),
        };
        let d = TrainData::new(Geometry::STAGE1, vec![item]).expect("no dialogue is fine");
        assert!(d.check_variant(Variant::Stackgan).is_ok());
        let err = d
            .check_variant(Variant::ChatpainterRecurrent)
            .expect_err("no turns");
        assert!(err.to_string().contains("image 44"), "{err}");
    }
}
