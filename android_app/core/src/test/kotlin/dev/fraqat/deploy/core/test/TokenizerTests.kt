package dev.fraqat.deploy.core.test

import dev.fraqat.deploy.core.ByteTokenizer
import dev.fraqat.deploy.core.WordLevelTokenizer
import dev.fraqat.deploy.core.asObject
import java.io.File

fun Context.captionTokenizer(): WordLevelTokenizer {
    val caption = asObject(example("tokenizer")["caption"], "caption")
    return WordLevelTokenizer.fromTokenizerJson(File(repo, caption["tokenizer"] as String).readText())
}

fun tokenizerTests(s: Suite) {
    s.test("tokenizer: the caption tokenizer reproduces tokenizer.json") {
        val caption = asObject(example("tokenizer")["caption"], "caption")
        val maxLength = (caption["max_length"] as Number).toInt()
        val tokenizer = captionTokenizer()
        for (case in caption["cases"] as List<*>) {
            val c = asObject(case, "case")
            val got = tokenizer.encode(c["text"] as String, maxLength)
            assertEquals((c["input_ids"] as List<*>).map { (it as Number).toLong() }, got.inputIds.toList(), "ids of '${c["text"]}'")
            assertEquals((c["attention_mask"] as List<*>).map { (it as Number).toLong() }, got.attentionMask.toList(), "mask of '${c["text"]}'")
        }
    }

    s.test("tokenizer: the whitespace pre-tokenizer splits as Hugging Face's") {
        assertEquals(listOf("it", "'", "s", "a", "b_c", "--", "9"), WordLevelTokenizer.preTokenize("it's a b_c -- 9"), "ascii")
        assertEquals(listOf("café", "…", "naïve"), WordLevelTokenizer.preTokenize("café…naïve"), "non-ascii")
    }

    s.test("tokenizer: the byte tokenizer reproduces tokenizer.json") {
        val byte = asObject(example("tokenizer")["byte"], "byte")
        val tokenizer = ByteTokenizer.fromTokenizerJson(File(repo, byte["tokenizer"] as String).readText())
        for (case in byte["cases"] as List<*>) {
            val c = asObject(case, "case")
            assertEquals((c["input_ids"] as List<*>).map { (it as Number).toLong() }, tokenizer.encode(c["text"] as String), "ids of '${c["text"]}'")
        }
        val decode = asObject(byte["decode"], "decode")
        assertEquals(decode["text"], tokenizer.decode((decode["ids"] as List<*>).map { (it as Number).toLong() }), "decode")
    }
}
