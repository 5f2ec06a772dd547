package dev.fraqat.deploy.core.test

import dev.fraqat.deploy.core.Backend
import dev.fraqat.deploy.core.BenchError
import dev.fraqat.deploy.core.BenchmarkEngine
import dev.fraqat.deploy.core.ComponentRunner
import dev.fraqat.deploy.core.ComponentSession
import dev.fraqat.deploy.core.DType
import dev.fraqat.deploy.core.DeviceInfo
import dev.fraqat.deploy.core.DeviceProbe
import dev.fraqat.deploy.core.EmbeddingTable
import dev.fraqat.deploy.core.ErrorKind
import dev.fraqat.deploy.core.FileTools
import dev.fraqat.deploy.core.FloatTensor
import dev.fraqat.deploy.core.GemmaDecoder
import dev.fraqat.deploy.core.GemmaSpec
import dev.fraqat.deploy.core.Json
import dev.fraqat.deploy.core.LongTensor
import dev.fraqat.deploy.core.Memory
import dev.fraqat.deploy.core.PipelineSpec
import dev.fraqat.deploy.core.Png
import dev.fraqat.deploy.core.Request
import dev.fraqat.deploy.core.Result
import dev.fraqat.deploy.core.Tensor
import dev.fraqat.deploy.core.TensorBin
import dev.fraqat.deploy.core.TensorInfo
import dev.fraqat.deploy.core.Timed
import dev.fraqat.deploy.core.TorchNoise
import dev.fraqat.deploy.core.asObject
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.assertThrows
import java.io.File

private val PHONE = DeviceInfo("samsung", "SM-S938B", "SM8750", 35, "htp", "2.51.0.260929181845", "1.31.1")

/** The toy model behind the [Backend] interface; [failOpen] / [failRun] make it fail as the HTP can. */
private class ToyBackend(
    val failOpen: BenchError? = null,
    val failRun: Throwable? = null,
    override val device: DeviceInfo = PHONE,
    val model: ComponentRunner = ToyModel,
    val inputs: Map<String, Map<String, TensorInfo>> = emptyMap(),
) : Backend {
    val opened = ArrayList<String>()
    var closed = 0

    override fun open(component: String, ctxOnnx: File, request: Request): ComponentSession {
        assertTrue(ctxOnnx.isFile) { "the engine opened $ctxOnnx, which is not there" }
        failOpen?.let { throw it }
        opened.add(component)
        return object : ComponentSession {
            override val inputs: Map<String, TensorInfo> = this@ToyBackend.inputs[component] ?: emptyMap()

            override fun run(feed: Map<String, Tensor>): Map<String, Tensor> {
                failRun?.let { throw it }
                return model.run(component, feed)
            }

            override fun close() {
                closed++
            }
        }
    }
}

private class FixedProbe : DeviceProbe {
    var calls = 0

    override fun memory() = Memory(100.0 + calls++, 150.0, 20.0)

    override fun thermalStatus() = 1
}

/** A files folder as the CLI leaves it: the (dummy) compiled components, the input tensors and request.json. */
private fun Context.stage(id: String, runs: Int = 2, warmup: Int = 1, edit: (MutableMap<String, Any?>) -> Unit = {}): Pair<File, File> {
    val files = tempDir("files")
    val request = copy(example("request")).toMutableMap()
    request["id"] = id
    @Suppress("UNCHECKED_CAST")
    val components = (request["model"] as MutableMap<String, Any?>)["components"] as MutableMap<String, Any?>
    for ((name, c) in components) {
        val folder = "models/$name-toy"
        val entries = listOf("${name}_ctx.onnx", "${name}_ctx_qnn.bin").map { fileName ->
            val file = File(files, "$folder/$fileName").apply { parentFile.mkdirs(); writeBytes("$name $fileName".toByteArray()) }
            linkedMapOf("path" to "$folder/$fileName", "sha256" to FileTools.sha256(file), "bytes" to file.length())
        }
        @Suppress("UNCHECKED_CAST")
        (c as MutableMap<String, Any?>).apply { put("onnx", entries[0]["path"]); put("files", entries) }
    }
    val golden = example("pipeline")
    request["pipeline"] = golden["pipeline"]
    val pipeline = PipelineSpec(asObject(golden["pipeline"], "pipeline"))
    val tokenizer = captionTokenizer()
    val cond = tokenizer.encode(golden["prompt"] as String, 16)
    val uncond = tokenizer.encode("", 16)
    val tensors = linkedMapOf(
        "input_ids" to cond.idsTensor(), "attention_mask" to cond.maskTensor(), "uncond_input_ids" to uncond.idsTensor(),
        "uncond_attention_mask" to uncond.maskTensor(),
        "noise" to TorchNoise.randn(intArrayOf(1) + pipeline.latentShape!!.toIntArray(), (golden["seed"] as Number).toLong()),
    )
    val specs = linkedMapOf<String, Any?>()
    for ((name, t) in tensors) {
        TensorBin.write(File(files, "runs/$id/p0_$name.bin"), t)
        specs[name] = linkedMapOf("path" to "runs/$id/p0_$name.bin", "dtype" to t.dtype.json, "shape" to t.shape.toList())
    }
    request["prompts"] = listOf(linkedMapOf("text" to golden["prompt"], "seed" to golden["seed"], "tensors" to specs))
    request["config"] = linkedMapOf("warmup" to warmup, "runs" to runs, "performance_mode" to "burst")
    edit(request)
    val requestFile = File(files, "runs/$id/request.json")
    requestFile.writeText(Json.write(request))
    return files to requestFile
}

private fun Context.result(file: File, kind: String): Result {
    val data = Json.parse(file.readText())
    schemas.validate("result", data)
    keep("result_$kind.json", file.readBytes())
    return Result.fromJson(asObject(data, "result"))
}

fun engineTests(s: Suite) {
    s.test("engine: a request runs end to end into a valid result, status and image") {
        val (files, requestFile) = stage("toy-ok", runs = 2, warmup = 1)
        val backend = ToyBackend()
        val probe = FixedProbe()
        val path = BenchmarkEngine(files, requestFile, backend, schemas, probe).run()
        assertEquals(File(requestFile.parentFile, "result.json"), path, "result path")
        val result = result(path, "ok")
        assertTrue(result.ok) { "the toy run failed: ${result.error}" }
        val steps = (example("pipeline")["pipeline"] as Map<*, *>)["steps"] as Number
        assertEquals(mapOf("text_encoder" to 4, "transformer" to 2 * steps.toInt(), "vae_decoder" to 2), result.timings.components.mapValues { it.value.n }, "calls per component (warm-up left out)")
        assertEquals(2, result.timings.endToEnd!!.n, "end-to-end runs")
        assertTrue(result.timings.init!! >= 0 && result.timings.firstInference!! > 0) { "init and first inference are timed" }
        assertEquals(listOf(2, 2), result.config.resolution, "resolution")
        assertEquals(listOf("text_encoder", "transformer", "vae_decoder"), backend.opened, "every component opened once")
        assertEquals(3, backend.closed, "every session closed")
        assertEquals(1, result.thermalBefore, "thermal before")
        assertTrue(result.memory.peakPss!! >= 101.0 && result.memory.peakRss == 150.0) { "peak memory over the samples: ${result.memory}" }
        assertEquals("images/0.png", result.outputs.single().image, "image output")
        val status = asObject(Json.parse(File(requestFile.parentFile, "status.json").readText()), "status")
        schemas.validate("status", status)
        assertEquals("done", status["state"], "final state")
        keep("status_done.json", File(requestFile.parentFile, "status.json").readBytes())
        // the image is the toy generation of pipeline.json, rounded to 8 bits
        val png = File(requestFile.parentFile, "images/0.png").readBytes()
        keep("toy.png", png)
        val golden = example("pipeline")
        val want = FloatTensor((golden["image_shape"] as List<*>).map { (it as Number).toInt() }.toIntArray(), doubles(golden["image"]).map { it.toFloat() }.toFloatArray())
        assertTrue(png.contentEquals(Png.encode(want))) { "the image differs from the golden toy image" }
        assertTrue(requestFile.parentFile.listFiles()!!.none { it.name.endsWith(".tmp") }) { "no temporary file is left" }
    }

    s.test("engine: a missing or changed model file ends in a model_missing result") {
        val (files, requestFile) = stage("toy-missing")
        File(files, "models/transformer-toy/transformer_ctx_qnn.bin").delete()
        val result = result(BenchmarkEngine(files, requestFile, ToyBackend(), schemas).run(), "model_missing")
        assertEquals(ErrorKind.MODEL_MISSING, result.error?.kind, "kind")
        assertEquals("transformer: models/transformer-toy/transformer_ctx_qnn.bin is not on the device", result.error?.message, "message")
        assertEquals(listOf(result.error!!.message), result.errors, "errors")
        assertEquals("toy-missing", result.requestId, "request id")

        val (files2, requestFile2) = stage("toy-changed")
        File(files2, "models/vae_decoder-toy/vae_decoder_ctx.onnx").writeText("vae_decoder vae_decoder_ctx.onnX")
        val changed = result(BenchmarkEngine(files2, requestFile2, ToyBackend(), schemas).run(), "model_changed")
        assertEquals("vae_decoder: models/vae_decoder-toy/vae_decoder_ctx.onnx differs from the pushed model", changed.error?.message, "same size, other bytes")
    }

    s.test("engine: invalid requests end in an invalid_request result") {
        val (files, requestFile) = stage("toy-v2") { it["schema_version"] = 2 }
        val v2 = result(BenchmarkEngine(files, requestFile, ToyBackend(), schemas).run(), "invalid_request")
        assertEquals(ErrorKind.INVALID_REQUEST, v2.error?.kind, "schema version 2")
        assertTrue(v2.error!!.message.contains("schema_version")) { v2.error.message }

        requestFile.writeText("{not json")
        val garbled = result(BenchmarkEngine(files, requestFile, ToyBackend(), schemas).run(), "not_json")
        assertEquals(ErrorKind.INVALID_REQUEST, garbled.error?.kind, "not JSON")
        assertEquals("toy-v2", garbled.requestId, "the request id falls back to the folder name")

        val nowhere = File(files, "runs/absent/request.json")
        val absent = result(BenchmarkEngine(files, nowhere, ToyBackend(), schemas).run(), "absent")
        assertEquals(ErrorKind.INVALID_REQUEST, absent.error?.kind, "no request file")

        val (files3, requestFile3) = stage("toy-short")
        TensorBin.write(File(files3, "runs/toy-short/p0_noise.bin"), FloatTensor(intArrayOf(3), FloatArray(3)))
        val short = result(BenchmarkEngine(files3, requestFile3, ToyBackend(), schemas).run(), "short_tensor")
        assertEquals(ErrorKind.INVALID_REQUEST, short.error?.kind, "a tensor file of the wrong size")
    }

    s.test("engine: HTP failures and out of memory end in results that say so") {
        val (files, requestFile) = stage("toy-htp")
        val unavailable = result(
            BenchmarkEngine(files, requestFile, ToyBackend(failOpen = BenchError(ErrorKind.HTP_UNAVAILABLE, "no QNN HTP device")), schemas).run(),
            "htp_unavailable",
        )
        assertEquals(ErrorKind.HTP_UNAVAILABLE, unavailable.error?.kind, "unavailable")

        val older = PHONE.copy(qnnVersion = "2.49.0.123456789012")
        val mismatch = result(
            BenchmarkEngine(files, requestFile, ToyBackend(failOpen = BenchError(ErrorKind.HTP_ERROR, "QNN error 5000"), device = older), schemas).run(),
            "htp_error",
        )
        assertEquals(ErrorKind.HTP_ERROR, mismatch.error?.kind, "htp error")
        assertTrue(mismatch.error!!.message.contains("compiled with QNN 2.51.0.260929181845, this app runs QNN 2.49.0.123456789012")) {
            "a QNN version mismatch is named: ${mismatch.error.message}"
        }

        val backend = ToyBackend(failRun = OutOfMemoryError("Java heap space"))
        val oom = result(BenchmarkEngine(files, requestFile, backend, schemas).run(), "out_of_memory")
        assertEquals(ErrorKind.OUT_OF_MEMORY, oom.error?.kind, "out of memory")
        assertEquals(3, backend.closed, "sessions are closed after a failure")

        val crash = result(BenchmarkEngine(files, requestFile, ToyBackend(failRun = IllegalStateException("boom")), schemas).run(), "internal")
        assertEquals(ErrorKind.INTERNAL, crash.error?.kind, "anything else")
        val status = asObject(Json.parse(File(requestFile.parentFile, "status.json").readText()), "status")
        assertEquals("error", status["state"], "the status says error")
    }

    s.test("gemma: greedy decoding over prefill and decode graphs keeps the cache as the Python loop does") {
        val spec = GemmaSpec(context = 8, promptLength = 4, layers = 2, kvHeads = 1, headDim = 2, slidingWindow = 3)
        val vocab = 12
        val seen = ArrayList<String>()
        // next token = previous + 1; every call checks the cache holds the tokens of the filled positions
        val model = ComponentRunner { component, feed ->
            val ids = (feed.getValue("input_ids") as LongTensor).data
            val n = ids.size
            val logits = FloatArray(n * vocab).also { l -> ids.forEachIndexed { t, id -> l[t * vocab + ((id + 1) % vocab).toInt()] = 1f } }
            val out = linkedMapOf<String, Tensor>("logits" to FloatTensor(intArrayOf(1, n, vocab), logits))
            for (i in 0 until 2) for (kind in listOf("key", "value")) {
                out["${kind}_$i"] = FloatTensor(intArrayOf(1, 1, n, 2), FloatArray(n * 2) { ids[it / 2].toFloat() + i })
            }
            if (component == "decode") {
                val position = (feed.getValue("position_ids") as LongTensor).data[0].toInt()
                val mask = (feed.getValue("attention_mask") as LongTensor).data
                assertEquals(position, mask.sum().toInt(), "valid slots at position $position")
                val sliding = (feed.getValue("sliding_mask") as LongTensor).data
                assertEquals((0 until 7).map { if (it < position && it > position - 3) 1L else 0L }, sliding.toList(), "sliding mask")
                val cache = (feed.getValue("past_value_1") as FloatTensor).data
                seen.add((0 until position).joinToString(",") { (cache[it * 2] - 1).toInt().toString() })
            }
            out
        }
        val timed = Timed()
        assertEquals(listOf(6L, 7L, 8L, 9L), GemmaDecoder.greedy(model, spec, listOf(2L, 5L), 4, null, timed), "continuation")
        assertEquals(listOf("2,5", "2,5,6", "2,5,6,7"), seen, "cache contents seen by the decode graph")
        assertEquals(listOf(6L, 7L), GemmaDecoder.greedy(model, spec, listOf(2L, 5L), 10, 8L, Timed()), "stops at eos")
        seen.clear()
        // prompt longer than the prefill: the rest goes through decode; the context (8) ends the continuation
        assertEquals(listOf(7L, 8L), GemmaDecoder.greedy(model, spec, listOf(1L, 2L, 3L, 4L, 5L, 6L), 10, null, Timed()), "context full")
        assertEquals("1,2,3,4", seen.first(), "prompt tokens past the prefill are decoded one by one")
        assertThrows<BenchError>("empty prompt") { GemmaDecoder.greedy(model, spec, emptyList(), 1, null, Timed()) }
        val derived = GemmaSpec.fromInputs(
            mapOf("input_ids" to TensorInfo(DType.INT64, intArrayOf(1, 4))),
            mapOf("past_key_0" to TensorInfo(DType.FLOAT32, intArrayOf(1, 1, 7, 2)), "past_key_1" to TensorInfo(DType.FLOAT32, intArrayOf(1, 1, 7, 2)),
                "sliding_mask" to TensorInfo(DType.INT64, intArrayOf(1, 7))),
            PipelineSpec(mapOf("kind" to "gemma", "sliding_window" to 3L)),
        )
        assertEquals(spec, derived, "the spec read from the graphs' inputs")
    }

    s.test("gemma: graphs that take inputs_embeds get the rows of the memory-mapped float16 .npy table") {
        // numpy's float16 bits of a few values, subnormals and infinities included
        val halves = mapOf(0x3c00 to 1f, 0xc000 to -2f, 0x7bff to 65504f, 0x0001 to 5.9604645e-8f, 0x0400 to 6.1035156e-5f, 0x3555 to 0.33325195f)
        for ((bits, value) in halves) assertEquals(value, EmbeddingTable.halfToFloat(bits), "half 0x${bits.toString(16)}")
        assertEquals(Float.NEGATIVE_INFINITY, EmbeddingTable.halfToFloat(0xfc00), "-inf")
        assertTrue(EmbeddingTable.halfToFloat(0x7e00).isNaN()) { "NaN" }
        assertEquals(260 to 128, EmbeddingTable.parseHeader("{'descr': '<f2', 'fortran_order': False, 'shape': (260, 128), }"), "header")
        assertEquals(null, EmbeddingTable.parseHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (260, 128), }"), "float32 refused")
        assertEquals(null, EmbeddingTable.parseHeader("{'descr': '<f2', 'fortran_order': True, 'shape': (260, 128), }"), "Fortran order refused")

        // a [12, 2] table whose row i is (i, -i / 2), as numpy writes it (.npy 1.0, header padded to 64 bytes)
        val vocab = 12
        fun half(v: Float): Int = if (v == 0f) 0 else {
            val bits = v.toRawBits()
            ((bits ushr 16) and 0x8000) or ((((bits ushr 23) and 0xff) - 127 + 15) shl 10) or ((bits and 0x7fffff) ushr 13)
        }
        var header = "{'descr': '<f2', 'fortran_order': False, 'shape': ($vocab, 2), }"
        header += " ".repeat(63 - (10 + header.length) % 64) + "\n"
        val body = java.nio.ByteBuffer.allocate(vocab * 4).order(java.nio.ByteOrder.LITTLE_ENDIAN)
        for (i in 0 until vocab) body.putShort(half(i.toFloat()).toShort()).putShort(half(-i / 2f).toShort())
        val file = File(tempDir("table"), "embedding.npy")
        file.writeBytes(byteArrayOf(0x93.toByte()) + "NUMPY".toByteArray() + byteArrayOf(1, 0, header.length.toByte(), 0) + header.toByteArray() + body.array())
        val table = EmbeddingTable.open(file)
        assertEquals(vocab to 2, table.vocab to table.hidden, "shape")
        assertEquals(listOf(3f, -1.5f, 11f, -5.5f), table.rows(longArrayOf(3, 11)).data.toList(), "rows")
        assertThrows<BenchError>("an id past the table") { table.rows(longArrayOf(12)) }
        File(file.parentFile, "short.npy").apply { writeBytes(file.readBytes().copyOf(file.length().toInt() - 2)) }.let {
            assertEquals(ErrorKind.MODEL_MISSING, assertThrows<BenchError>("a cut table") { EmbeddingTable.open(it) }.kind, "cut")
        }

        // the same decoding as with input_ids: the toy reads each token back from its row's first value
        val spec = GemmaSpec(context = 8, promptLength = 4, layers = 2, kvHeads = 1, headDim = 2, slidingWindow = 3, hostEmbedding = true)
        val model = ComponentRunner { _, feed ->
            assertTrue("input_ids" !in feed) { "no input_ids" }
            val embeds = feed.getValue("inputs_embeds") as FloatTensor
            val n = embeds.shape[1]
            assertEquals(listOf(1, n, 2), embeds.shape.toList(), "inputs_embeds shape")
            val ids = LongArray(n) { embeds.data[it * 2].toLong() }
            for (t in 0 until n) assertEquals(-ids[t] / 2f, embeds.data[t * 2 + 1], "row $t")
            val logits = FloatArray(n * vocab).also { l -> ids.forEachIndexed { t, id -> l[t * vocab + ((id + 1) % vocab).toInt()] = 1f } }
            val out = linkedMapOf<String, Tensor>("logits" to FloatTensor(intArrayOf(1, n, vocab), logits))
            for (i in 0 until 2) for (kind in listOf("key", "value")) out["${kind}_$i"] = FloatTensor(intArrayOf(1, 1, n, 2), FloatArray(n * 2))
            out
        }
        assertEquals(listOf(6L, 7L, 8L, 9L), GemmaDecoder.greedy(model, spec, listOf(2L, 5L), 4, null, Timed(), table), "continuation")
        assertEquals(listOf(7L, 8L), GemmaDecoder.greedy(model, spec, listOf(1L, 2L, 3L, 4L, 5L, 6L), 10, null, Timed(), table), "long prompt")
        assertThrows<BenchError>("no table") { GemmaDecoder.greedy(model, spec, listOf(2L), 1, null, Timed()) }
        val specJson = linkedMapOf<String, Any?>("context" to 8L, "prompt_length" to 4L, "layers" to 2L, "kv_heads" to 1L, "head_dim" to 2L,
            "sliding_window" to 3L, "pad_id" to 0L, "embedding" to "host")
        assertEquals(spec, GemmaSpec.fromJson(specJson), "embedding: host read from pipeline.spec")
        assertEquals(spec, GemmaSpec.fromInputs(
            mapOf("inputs_embeds" to TensorInfo(DType.FLOAT32, intArrayOf(1, 4, 2))),
            mapOf("past_key_0" to TensorInfo(DType.FLOAT32, intArrayOf(1, 1, 7, 2)), "past_key_1" to TensorInfo(DType.FLOAT32, intArrayOf(1, 1, 7, 2)),
                "sliding_mask" to TensorInfo(DType.INT64, intArrayOf(1, 7))),
            PipelineSpec(mapOf("kind" to "gemma", "sliding_window" to 3L)),
        ), "host embedding read from the graphs' inputs")
    }

    s.test("engine: a Gemma request decodes through prefill and decode into tokens") {
        val golden = example("gemma")
        val files = tempDir("gemma")
        val components = linkedMapOf<String, Any?>()
        for (name in listOf("prefill", "decode")) {
            val file = File(files, "models/$name-toy/${name}_ctx.onnx").apply { parentFile.mkdirs(); writeText(name) }
            components[name] = linkedMapOf(
                "onnx" to "models/$name-toy/${name}_ctx.onnx",
                "files" to listOf(linkedMapOf("path" to "models/$name-toy/${name}_ctx.onnx", "sha256" to FileTools.sha256(file), "bytes" to file.length())),
                "inputs" to listOf("input_ids"), "outputs" to listOf("logits"),
            )
        }
        val case = asObject((golden["cases"] as List<*>)[0], "case")
        val prompt = (case["prompt"] as List<*>).map { (it as Number).toLong() }
        TensorBin.write(File(files, "runs/toy-gemma/p0_prompt_ids.bin"), LongTensor(intArrayOf(1, prompt.size), prompt.toLongArray()))
        val request = linkedMapOf(
            "schema_version" to 1, "id" to "toy-gemma",
            "model" to linkedMapOf("name" to "tiny-gemma", "components" to components),
            "pipeline" to linkedMapOf("kind" to "gemma", "max_new_tokens" to case["max_new_tokens"], "context" to 10, "eos_token_id" to null, "spec" to golden["spec"]),
            "prompts" to listOf(linkedMapOf("text" to "toy", "seed" to 0, "tensors" to linkedMapOf(
                "prompt_ids" to linkedMapOf("path" to "runs/toy-gemma/p0_prompt_ids.bin", "dtype" to "int64", "shape" to listOf(1, prompt.size)),
            ))),
            "config" to linkedMapOf("warmup" to 0, "runs" to 2),
        )
        val requestFile = File(files, "runs/toy-gemma/request.json").apply { writeText(Json.write(request)) }
        val spec = GemmaSpec.fromJson(asObject(golden["spec"], "spec"))
        val backend = ToyBackend(model = ToyGemma(spec, 16))
        val result = result(BenchmarkEngine(files, requestFile, backend, schemas).run(), "gemma")
        assertTrue(result.ok) { "the Gemma toy run failed: ${result.error}" }
        val output = result.outputs.single()
        assertEquals((case["tokens"] as List<*>).map { (it as Number).toLong() }, output.tokens, "tokens")
        assertTrue(output.tokensPerSecond!! > 0) { "tokens per second" }
        assertEquals(2, result.timings.components.getValue("prefill").n, "one prefill per run")
        assertEquals(2 * (output.tokens!!.size - 1), result.timings.components.getValue("decode").n, "one decode per new token but the last")
    }
}
