"""Tokenizers for the tiny models, built in code so nothing is downloaded.

Both follow Gemma's special-token ids (pad 0, eos 1, bos 2, unk 3) and prepend ``<bos>`` like Gemma's
tokenizer, and both are ``PreTrainedTokenizerFast`` so ``save_pretrained``/``from_pretrained`` round-trip.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<unk>")
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
)  # fmt: skip

# Small fixed English vocabulary for image captions. Append only: ids are part of the tiny checkpoints.
_CAPTION_WORDS = """
a an the this that these those some any each every no not and or but with without of in on at to from by
for into onto over under above below near far behind front next between inside outside around through up
down left right top bottom middle center side corner edge background foreground is are was were be being
been has have had it its there here it's i you he she we they my your his her our their me him us them
handwritten digit digits number numeral numbers letter letters written drawn draw drawing sketch sketched
printed scribbled scribble image picture photo photograph painting illustration render rendering icon logo
symbol sign text word character style small large big tiny huge little thin thick bold light dark bright
pale soft sharp blurry clear clean messy neat simple plain detailed old new young pretty beautiful ugly
round square straight curved curly wavy slanted tilted upright rotated centered single double pair few many
several black white gray grey red green blue yellow orange purple pink brown gold silver colorful
monochrome colored color grayscale pixel pixels pixelated low high resolution quality sample noisy noise
pen pencil ink chalk marker brush paint paper board wall sky sea water sun moon star stars cloud clouds
tree trees flower flowers grass field mountain river road street city house building room window door
table chair car boat cat dog bird fish horse cow person man woman child boy girl face hand eye eyes head
shape shapes line lines circle triangle rectangle dot dots stroke strokes loop curve corner angle
close closeup view portrait landscape scene pattern texture art artwork digital vintage modern abstract
realistic cartoon minimal minimalist very quite slightly more most less least as like than so too also
just only one's made showing shows looking standing sitting lying flying running on top of
"""

PUNCTUATION: tuple[str, ...] = (".", ",", "!", "?", "-", "'", '"', ":", ";", "(", ")", "/", "&")


def caption_words() -> list[str]:
    """The word vocabulary of the caption tokenizer, in id order after the special tokens."""
    words: list[str] = []
    seen: set[str] = set(SPECIAL_TOKENS)
    for word in (*[str(d) for d in range(10)], *NUMBER_WORDS, *PUNCTUATION, *_CAPTION_WORDS.split()):
        # the pre-tokenizer splits "it's" into pieces, so only keep words it can actually produce
        pieces = [p for p, _ in pre_tokenizers.Whitespace().pre_tokenize_str(word)]
        for piece in pieces:
            if piece not in seen:
                seen.add(piece)
                words.append(piece)
    return words


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def build_caption_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased word-level tokenizer for short image captions (the tiny Sana text encoder's)."""
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *caption_words()))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return _wrap(tok)


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in character for every byte, in byte order (what ByteLevel emits)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (ids 4..259): lossless on any text and independent of any corpus."""
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *_byte_symbols()))}
    # BPE without merges splits every pre-token into its single byte symbols
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return _wrap(tok)
