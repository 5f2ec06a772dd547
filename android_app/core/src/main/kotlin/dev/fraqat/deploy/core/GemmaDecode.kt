package dev.fraqat.deploy.core

import org.json.JSONException

/**
 * Gemma-2 greedy decoding over a prefill and a decode graph with a host-side KV cache, as
 * `fraqat_deploy/models/gemma_graphs.py` (`greedy_decode`, driven by `device/pipeline.py` `gemma_generate`) does.
 * The static shapes come from the request's `pipeline.spec` (`GemmaGraphSpec.to_dict`); without it, from the compiled
 * graphs' inputs: `prefill` takes `input_ids [1, N]`, `decode` takes `past_key_i / past_value_i [1, kv_heads, C - 1,
 * head_dim]` (and `sliding_mask` when a sliding window is shorter than the context).
 */
data class GemmaSpec(
    val context: Int,
    val promptLength: Int,
    val layers: Int,
    val kvHeads: Int,
    val headDim: Int,
    val slidingWindow: Int?,
    val padId: Long = 0,
    /** The graphs take `inputs_embeds` (rows of the host's [EmbeddingTable]) instead of `input_ids`. */
    val hostEmbedding: Boolean = false,
) {
    val cacheSlots: Int get() = context - 1

    /** The graphs' token input for [ids] (`[1, ids.size]`): the ids, or their rows from [table]. */
    fun tokenFeed(ids: LongArray, table: EmbeddingTable?): Pair<String, Tensor> {
        if (!hostEmbedding) return "input_ids" to LongTensor(intArrayOf(1, ids.size), ids)
        table ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the Gemma graphs take inputs_embeds but the request names no embedding table")
        return "inputs_embeds" to table.rows(ids)
    }

    companion object {
        /** From the request's `pipeline.spec` when the CLI sent it, else from the graphs' inputs. */
        fun of(pipeline: PipelineSpec, prefill: Map<String, TensorInfo>, decode: Map<String, TensorInfo>): GemmaSpec =
            pipeline.raw.objOrNull("spec")?.let(::fromJson) ?: fromInputs(prefill, decode, pipeline)

        /** `GemmaGraphSpec.to_dict()` (context, prompt_length, layers, kv_heads, head_dim, sliding_window, pad_id, embedding). */
        fun fromJson(o: Map<String, Any?>): GemmaSpec = try {
            val embedding = o.strOrNull("embedding") ?: "graph"
            if (embedding != "graph" && embedding != "host") throw JSONException("unknown embedding '$embedding'")
            GemmaSpec(
                o.int("context"), o.int("prompt_length"), o.int("layers"), o.int("kv_heads"), o.int("head_dim"),
                o.intOrNull("sliding_window"), o.longOrNull("pad_id") ?: 0L, embedding == "host",
            )
        } catch (e: JSONException) {
            throw BenchError(ErrorKind.INVALID_REQUEST, "pipeline.spec: ${e.message}")
        }

        fun fromInputs(prefill: Map<String, TensorInfo>, decode: Map<String, TensorInfo>, pipeline: PipelineSpec): GemmaSpec {
            fun bad(what: String): Nothing = throw BenchError(ErrorKind.INVALID_REQUEST, "the Gemma graphs do not look as expected: $what")
            val host = "inputs_embeds" in prefill
            val ids = prefill[if (host) "inputs_embeds" else "input_ids"] ?: bad("prefill has no input_ids")
            val past = decode["past_key_0"] ?: bad("decode has no past_key_0")
            if (past.shape.size != 4 || ids.shape.size != (if (host) 3 else 2)) bad("unexpected ranks")
            val layers = decode.keys.count { it.startsWith("past_key_") }
            val sliding = if ("sliding_mask" in decode) {
                pipeline.slidingWindow ?: bad("decode takes a sliding_mask but the request gives no sliding window")
            } else {
                null
            }
            return GemmaSpec(past.shape[2] + 1, ids.shape[1], layers, past.shape[1], past.shape[3], sliding, hostEmbedding = host)
        }
    }
}

/** The host's cache arrays, slot = position (and, for graphs that take `inputs_embeds`, the table). */
class KvCache(private val spec: GemmaSpec, private val table: EmbeddingTable? = null) {
    private val slotSize = spec.headDim
    val arrays: LinkedHashMap<String, FloatTensor> = LinkedHashMap<String, FloatTensor>().apply {
        val shape = intArrayOf(1, spec.kvHeads, spec.cacheSlots, spec.headDim)
        for (i in 0 until spec.layers) for (kind in listOf("key", "value")) {
            put("past_${kind}_$i", FloatTensor(shape, FloatArray(spec.kvHeads * spec.cacheSlots * spec.headDim)))
        }
    }
    var length = 0

    /** Slots start until start+count from the outputs' first [count] tokens (those past the cache are dropped). */
    fun write(outputs: Map<String, Tensor>, start: Int, count: Int) {
        val n = minOf(count, spec.cacheSlots - start)
        if (n <= 0) return
        for (i in 0 until spec.layers) for (kind in listOf("key", "value")) {
            val src = outputs["${kind}_$i"] as? FloatTensor ?: throw BenchError(ErrorKind.HTP_ERROR, "the graph returned no float ${kind}_$i")
            val dst = arrays.getValue("past_${kind}_$i").data
            val tokens = src.shape[2]
            for (h in 0 until spec.kvHeads) for (t in 0 until n) {
                System.arraycopy(src.data, (h * tokens + t) * slotSize, dst, (h * spec.cacheSlots + start + t) * slotSize, slotSize)
            }
        }
    }

    fun decodeFeed(token: Long, position: Int): Map<String, Tensor> {
        val slots = spec.cacheSlots
        val feed = LinkedHashMap<String, Tensor>()
        feed += spec.tokenFeed(longArrayOf(token), table)
        feed["position_ids"] = LongTensor(intArrayOf(1, 1), longArrayOf(position.toLong()))
        feed["attention_mask"] = LongTensor(intArrayOf(1, slots), LongArray(slots) { if (it < position) 1 else 0 })
        spec.slidingWindow?.let { w ->
            feed["sliding_mask"] = LongTensor(intArrayOf(1, slots), LongArray(slots) { if (it < position && it > position - w) 1 else 0 })
        }
        feed.putAll(arrays)
        return feed
    }
}

object GemmaDecoder {
    fun prefillFeed(spec: GemmaSpec, prompt: List<Long>, table: EmbeddingTable? = null): Map<String, Tensor> {
        val n = spec.promptLength
        return linkedMapOf(
            spec.tokenFeed(LongArray(n) { if (it < prompt.size) prompt[it] else spec.padId }, table),
            "position_ids" to LongTensor(intArrayOf(1, n), LongArray(n) { it.toLong() }),
            "attention_mask" to LongTensor(intArrayOf(1, n), LongArray(n) { if (it < prompt.size) 1 else 0 }),
        )
    }

    /**
     * The greedy continuation of [prompt] (token ids): the new ids. The first N prompt tokens go through one
     * prefill, the rest through the decode graph one by one; stops at [eosId] (not returned), after
     * [maxNewTokens], or when the context is full. [onToken] sees each new token as it comes (the chat screen).
     * [table]: the host's embedding table, for graphs that take `inputs_embeds` ([GemmaSpec.hostEmbedding]).
     */
    fun greedy(
        runner: ComponentRunner,
        spec: GemmaSpec,
        prompt: List<Long>,
        maxNewTokens: Int,
        eosId: Long?,
        timed: Timed,
        table: EmbeddingTable? = null,
        onToken: (Long) -> Unit = {},
    ): List<Long> {
        if (prompt.isEmpty()) throw BenchError(ErrorKind.INVALID_REQUEST, "an empty prompt cannot be decoded")
        if (prompt.size > spec.context) {
            throw BenchError(ErrorKind.INVALID_REQUEST, "the prompt has ${prompt.size} tokens, the exported context holds ${spec.context}")
        }
        val cache = KvCache(spec, table)
        val first = prompt.take(spec.promptLength)
        val out = timed.call(runner, "prefill", prefillFeed(spec, first, table))
        cache.write(out, 0, first.size)
        cache.length = first.size
        var logits = lastLogits(out, first.size - 1)

        fun step(token: Long): FloatArray {
            val position = cache.length
            val result = timed.call(runner, "decode", cache.decodeFeed(token, position))
            cache.write(result, position, 1)
            cache.length += 1
            return lastLogits(result, 0)
        }

        for (token in prompt.drop(spec.promptLength)) logits = step(token)
        val new = ArrayList<Long>()
        while (new.size < maxNewTokens && cache.length < spec.context) {
            val token = argmax(logits).toLong()
            if (eosId != null && token == eosId) break
            new.add(token)
            onToken(token)
            if (new.size < maxNewTokens && cache.length < spec.context) logits = step(token)
        }
        return new
    }

    private fun lastLogits(outputs: Map<String, Tensor>, position: Int): FloatArray {
        val logits = outputs["logits"] as? FloatTensor ?: throw BenchError(ErrorKind.HTP_ERROR, "the graph returned no float logits")
        val vocab = logits.shape.last()
        return logits.data.copyOfRange(position * vocab, (position + 1) * vocab)
    }

    /** The first index of the largest value (numpy.argmax). */
    fun argmax(values: FloatArray): Int {
        var best = 0
        for (i in 1 until values.size) if (values[i] > values[best]) best = i
        return best
    }
}
