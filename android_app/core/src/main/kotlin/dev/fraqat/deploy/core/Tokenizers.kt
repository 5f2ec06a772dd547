package dev.fraqat.deploy.core

import java.text.Normalizer

/** Token ids and their attention mask, both of the padded length. */
data class Encoding(val inputIds: LongArray, val attentionMask: LongArray) {
    fun idsTensor() = LongTensor(intArrayOf(1, inputIds.size), inputIds)

    fun maskTensor() = LongTensor(intArrayOf(1, attentionMask.size), attentionMask)
}

/**
 * The word-level caption tokenizer of the tiny Sana text encoder (`models/tokenizers.py`
 * `build_caption_tokenizer`), read from the model's Hugging Face `tokenizer.json`: NFKC and lower-case
 * normalisation, the `Whitespace` pre-tokenizer (`\w+|[^\w\s]+`), a word-level vocabulary with an unknown token, a
 * `<bos>` prefix. [encode] tokenizes a prompt as `models/sana_graphs.py` `_tokens` does for the text encoder.
 */
class WordLevelTokenizer(
    private val vocab: Map<String, Int>,
    private val unkId: Int,
    private val prefix: List<Int>,
    private val padId: Int,
    private val nfkc: Boolean,
    private val lowercase: Boolean,
) {
    /** The prompt lower-cased and stripped, normalised, split, prefixed, truncated and right-padded to [maxLength]. */
    fun encode(prompt: String, maxLength: Int): Encoding {
        val ids = ArrayList<Int>(prefix)
        val words = preTokenize(normalize(prompt.lowercase().trim()))
        for (w in words.take(maxOf(0, maxLength - prefix.size))) ids.add(vocab[w] ?: unkId)
        val kept = ids.take(maxLength)
        return Encoding(
            LongArray(maxLength) { if (it < kept.size) kept[it].toLong() else padId.toLong() },
            LongArray(maxLength) { if (it < kept.size) 1L else 0L },
        )
    }

    fun normalize(text: String): String {
        var s = text
        if (nfkc) s = Normalizer.normalize(s, Normalizer.Form.NFKC)
        if (lowercase) s = s.lowercase()
        return s
    }

    companion object {
        fun fromTokenizerJson(text: String): WordLevelTokenizer {
            val o = asObject(Json.parse(text), "tokenizer.json")
            val model = o.obj("model")
            require(model.str("type") == "WordLevel") { "not a word-level tokenizer: ${model.str("type")}" }
            val vocab = model.obj("vocab").mapValues { asLong(it.value)!!.toInt() }
            val normalizers = o.objOrNull("normalizer")?.let { n ->
                if (n.str("type") == "Sequence") n.list("normalizers").map { asObject(it, "normalizer").str("type") } else listOf(n.str("type"))
            } ?: emptyList()
            val unsupported = normalizers - setOf("NFKC", "Lowercase")
            require(unsupported.isEmpty()) { "unsupported normalizers $unsupported" }
            require(o.objOrNull("pre_tokenizer")?.strOrNull("type") == "Whitespace") { "the pre-tokenizer must be Whitespace" }
            val unk = vocab[model.strOrNull("unk_token") ?: "<unk>"] ?: throw IllegalArgumentException("no unknown token")
            val pad = o.objOrNull("padding")?.intOrNull("pad_id") ?: vocab["<pad>"] ?: 0
            return WordLevelTokenizer(vocab, unk, templatePrefix(o, vocab), pad, "NFKC" in normalizers, "Lowercase" in normalizers)
        }

        /** The special tokens a `TemplateProcessing` post-processor puts before a single sequence. */
        internal fun templatePrefix(o: Map<String, Any?>, vocab: Map<String, Int>): List<Int> {
            val post = o.objOrNull("post_processor") ?: return emptyList()
            require(post.str("type") == "TemplateProcessing") { "unsupported post-processor ${post.str("type")}" }
            val prefix = ArrayList<Int>()
            for (piece in post.list("single").map { asObject(it, "template piece") }) {
                val special = piece.objOrNull("SpecialToken") ?: break
                val name = special.str("id")
                val ids = post.objOrNull("special_tokens")?.objOrNull(name)?.list("ids")?.map { asLong(it)!!.toInt() }
                prefix.addAll(ids ?: listOf(vocab[name] ?: throw IllegalArgumentException("unknown special token $name")))
            }
            return prefix
        }

        /** Hugging Face's `Whitespace` pre-tokenizer: runs of word characters, and runs of other non-space characters. */
        fun preTokenize(text: String): List<String> {
            val out = ArrayList<String>()
            val current = StringBuilder()
            var currentIsWord = false
            var i = 0
            while (i < text.length) {
                val cp = text.codePointAt(i)
                i += Character.charCount(cp)
                if (isSpace(cp)) {
                    if (current.isNotEmpty()) out.add(current.toString())
                    current.setLength(0)
                    continue
                }
                val word = isWord(cp)
                if (current.isNotEmpty() && word != currentIsWord) {
                    out.add(current.toString())
                    current.setLength(0)
                }
                currentIsWord = word
                current.appendCodePoint(cp)
            }
            if (current.isNotEmpty()) out.add(current.toString())
            return out
        }

        /** Unicode `\w` (as the Rust regex crate defines it): alphabetic, marks, decimal digits, connector punctuation, joiners. */
        fun isWord(cp: Int): Boolean {
            if (Character.isAlphabetic(cp) || Character.isDigit(cp) || cp == 0x200C || cp == 0x200D) return true
            return when (Character.getType(cp).toByte()) {
                Character.NON_SPACING_MARK, Character.ENCLOSING_MARK, Character.COMBINING_SPACING_MARK, Character.CONNECTOR_PUNCTUATION -> true
                else -> false
            }
        }

        /** Unicode `White_Space`. */
        fun isSpace(cp: Int): Boolean = cp in 0x09..0x0D || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
            cp in 0x2000..0x200A || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000
    }
}

/**
 * The tiny-Gemma byte tokenizer (`models/tokenizers.py` `build_byte_tokenizer`): one token per UTF-8 byte through
 * GPT-2's byte-to-symbol map, a `<bos>` prefix; read from the model's `tokenizer.json`.
 */
class ByteTokenizer(private val byteIds: IntArray, private val prefix: List<Int>) {
    private val byteOf: Map<Int, Int> = byteIds.withIndex().associate { (b, id) -> id to b }

    fun encode(text: String): List<Long> = prefix.map { it.toLong() } + text.toByteArray(Charsets.UTF_8).map { byteIds[it.toInt() and 0xFF].toLong() }

    /** The text of [ids], special tokens skipped, invalid UTF-8 replaced (as `decode(..., skip_special_tokens=True)`). */
    fun decode(ids: List<Long>): String {
        val bytes = ids.mapNotNull { byteOf[it.toInt()]?.toByte() }.toByteArray()
        return bytes.decodeToString()
    }

    companion object {
        fun fromTokenizerJson(text: String): ByteTokenizer {
            val o = asObject(Json.parse(text), "tokenizer.json")
            val model = o.obj("model")
            require(model.str("type") == "BPE" && model.list("merges").isEmpty()) { "not a byte tokenizer (BPE without merges)" }
            require(o.objOrNull("pre_tokenizer")?.strOrNull("type") == "ByteLevel") { "the pre-tokenizer must be ByteLevel" }
            val vocab = model.obj("vocab").mapValues { asLong(it.value)!!.toInt() }
            val symbols = byteSymbols()
            val ids = IntArray(256) { b -> vocab[symbols[b]] ?: throw IllegalArgumentException("byte $b has no token") }
            return ByteTokenizer(ids, WordLevelTokenizer.templatePrefix(o, vocab))
        }

        /** GPT-2's printable stand-in character for every byte, in byte order. */
        fun byteSymbols(): List<String> {
            val printable = (('!'.code..'~'.code) + (0xA1..0xAC) + (0xAE..0xFF)).toSet()
            var extra = 0
            return (0 until 256).map { b -> if (b in printable) String(Character.toChars(b)) else String(Character.toChars(256 + extra++)) }
        }
    }
}
