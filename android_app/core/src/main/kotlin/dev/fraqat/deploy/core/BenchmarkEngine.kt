package dev.fraqat.deploy.core

import org.json.JSONException
import java.io.File
import java.io.IOException

/** One compiled component, opened (on the phone: an ONNX Runtime session on the QNN HTP). */
interface ComponentSession : AutoCloseable {
    /** The inputs the compiled graph takes, with their static shapes. */
    val inputs: Map<String, TensorInfo>

    fun run(feed: Map<String, Tensor>): Map<String, Tensor>
}

/** Where components run: opens them and says what the device is. */
interface Backend {
    val device: DeviceInfo

    /** Open [ctxOnnx] (its context binary beside it); throw [BenchError] `htp_unavailable` / `htp_error` when it cannot. */
    fun open(component: String, ctxOnnx: File, request: Request): ComponentSession
}

/** What the app can measure about itself: memory (MB) and the thermal status (PowerManager's 0..6). */
interface DeviceProbe {
    fun memory(): Memory = Memory.UNKNOWN

    fun thermalStatus(): Int? = null
}

/**
 * The benchmark the CLI starts (`BenchmarkActivity`), the Kotlin counterpart of `fraqat_deploy/device/engine.py`:
 * read `runs/<id>/request.json` under the files folder, check the model files (size and sha256), open each
 * component, warm up, run, rewrite `status.json` as it goes, and write `result.json` through a temporary file and a
 * rename, with images beside it. A failure it can name (invalid request, missing model, out of memory, HTP
 * unavailable or failing, full storage) still ends in a `result.json` that carries the error.
 */
class BenchmarkEngine(
    private val filesDir: File,
    private val requestFile: File,
    private val backend: Backend,
    private val schemas: Schemas?,
    private val probe: DeviceProbe = object : DeviceProbe {},
    private val clock: () -> Long = System::nanoTime,
    private val wallClock: () -> Long = System::currentTimeMillis,
    private val log: (String) -> Unit = {},
) {
    private val outDir: File = requestFile.absoluteFile.parentFile
    private var request: Request? = null
    private var requestId: String = outDir.name
    private var resolution: List<Int>? = null
    private var thermalBefore: Int? = null
    private var peakMemory = Memory.UNKNOWN
    private val sessions = LinkedHashMap<String, ComponentSession>()
    private var table: EmbeddingTable? = null

    /** Runs the request and returns the path of `result.json` (written in every case but a full disk). */
    fun run(): File {
        try {
            return execute()
        } catch (e: BenchError) {
            closeSessions()
            return fail(e.kind, e.message ?: e.kind.json)
        } catch (e: OutOfMemoryError) {
            closeSessions()
            return fail(ErrorKind.OUT_OF_MEMORY, "out of memory while running the model")
        } catch (e: IOException) {
            closeSessions()
            if (FileTools.isStorageFull(e)) return fail(ErrorKind.STORAGE_FULL, "the phone's storage is full: ${e.message}")
            return fail(ErrorKind.INTERNAL, "I/O error: ${e.message}")
        } catch (e: Exception) {
            closeSessions()
            return fail(ErrorKind.INTERNAL, "${e::class.java.simpleName}: ${e.message}")
        } finally {
            closeSessions()
        }
    }

    private fun closeSessions() {
        sessions.values.forEach { runCatching { it.close() } }
        sessions.clear()
    }

    // -- status and result ------------------------------------------------------------------------------------

    private fun status(state: State, done: Int, total: Int, message: String) {
        val status = Status(requestId, state, done, total, message, wallClock())
        FileTools.writeJsonAtomic(File(outDir, "status.json"), status.toJson())
        log("${state.json} $done/$total $message")
    }

    private fun sampleMemory() {
        peakMemory = peakMemory.max(probe.memory())
    }

    private fun result(
        error: ResultError? = null,
        timings: Timings = Timings.EMPTY,
        outputs: List<Output> = emptyList(),
        errors: List<String> = emptyList(),
    ): Result {
        val r = request
        sampleMemory()
        return Result(
            requestId = requestId,
            error = error,
            device = backend.device,
            modelName = r?.modelName ?: "?",
            componentHashes = r?.components?.mapValues { it.value.files.firstOrNull()?.sha256 ?: "" } ?: emptyMap(),
            config = ResultConfig(
                r?.config?.warmup ?: 0, r?.config?.runs ?: 1, r?.pipeline?.raw?.intOrNull("steps"), resolution,
                r?.config?.performanceMode, r?.prompts?.size ?: 0,
            ),
            timings = timings,
            memory = peakMemory,
            thermalBefore = thermalBefore,
            thermalAfter = probe.thermalStatus(),
            outputs = outputs,
            errors = errors,
        )
    }

    private fun write(result: Result): File {
        val json = result.toJson()
        schemas?.validate("result", json)
        val file = File(outDir, "result.json")
        FileTools.writeJsonAtomic(file, json)
        return file
    }

    private fun fail(kind: ErrorKind, message: String): File {
        log("error ${kind.json}: $message")
        val file = write(result(error = ResultError(kind, message), errors = listOf(message)))
        runCatching { status(State.ERROR, 0, 0, message) }
        return file
    }

    // -- the work ------------------------------------------------------------------------------------------------

    private fun loadRequest(): Request {
        if (!requestFile.isFile) throw BenchError(ErrorKind.INVALID_REQUEST, "no request at $requestFile")
        val data = try {
            Json.parse(requestFile.readText())
        } catch (e: JSONException) {
            throw BenchError(ErrorKind.INVALID_REQUEST, "request.json is not JSON: ${e.message}")
        }
        try {
            schemas?.validate("request", data)
            return Request.fromJson(asObject(data, "request.json"))
        } catch (e: ProtocolException) {
            throw BenchError(ErrorKind.INVALID_REQUEST, e.message ?: "invalid request")
        } catch (e: JSONException) {
            throw BenchError(ErrorKind.INVALID_REQUEST, "request.json: ${e.message}")
        }
    }

    private fun checkFiles(r: Request) {
        for ((name, f) in r.modelFiles) {
            val file = File(filesDir, f.path)
            if (!file.isFile) throw BenchError(ErrorKind.MODEL_MISSING, "$name: ${f.path} is not on the device")
            if (file.length() != f.bytes || FileTools.sha256(file) != f.sha256) {
                throw BenchError(ErrorKind.MODEL_MISSING, "$name: ${f.path} differs from the pushed model")
            }
        }
    }

    /** The request's embedding table, mapped once, for Gemma graphs that take `inputs_embeds`. */
    private fun embeddingTable(r: Request): EmbeddingTable {
        table?.let { return it }
        val entry = r.embedding
            ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the Gemma graphs take inputs_embeds but the request names no embedding table (model.embedding)")
        return EmbeddingTable.open(File(filesDir, entry.path)).also { table = it }
    }

    private fun tensors(prompt: PromptSpec): Map<String, Tensor> = prompt.tensors.mapValues { (_, t) ->
        val file = File(filesDir, t.path)
        if (!file.isFile) throw BenchError(ErrorKind.MODEL_MISSING, "input tensor ${t.path} is not on the device")
        TensorBin.read(file, t.dtype, t.shape.toIntArray())
    }

    private fun open(r: Request, name: String, component: ComponentSpec): ComponentSession {
        try {
            return backend.open(name, File(filesDir, component.onnx), r)
        } catch (e: BenchError) {
            val built = r.qnnVersion
            val runtime = backend.device.qnnVersion
            if (e.kind == ErrorKind.HTP_ERROR && built != null && runtime != null && built != runtime) {
                throw BenchError(e.kind, "${e.message} (the model was compiled with QNN $built, this app runs QNN $runtime)")
            }
            throw e
        }
    }

    private fun execute(): File {
        status(State.LOADING, 0, 0, "reading the request")
        val r = loadRequest()
        request = r
        requestId = r.id
        checkFiles(r)
        thermalBefore = probe.thermalStatus()
        status(State.LOADING, 0, 0, "opening ${r.components.size} components")
        val started = clock()
        for ((name, component) in r.components) sessions[name] = open(r, name, component)
        val initMs = (clock() - started) / 1e6
        sampleMemory()
        val runner = ComponentRunner { component, feed ->
            val session = sessions[component] ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the pipeline needs a '$component' component")
            session.run(feed)
        }
        val prompts = r.prompts.map { it to tensors(it) }
        val warmup = r.config.warmup
        val runs = r.config.runs
        val total = (warmup + runs) * prompts.size
        val componentMs = LinkedHashMap<String, MutableList<Double>>()
        val endToEnd = ArrayList<Double>()
        var firstInference: Double? = null
        val outputs = ArrayList<Output>()
        var done = 0
        for (i in 0 until warmup + runs) {
            val measured = i >= warmup
            status(if (measured) State.RUNNING else State.WARMUP, done, total, if (measured) "run ${i + 1 - warmup}" else "warm-up ${i + 1}")
            for ((k, pair) in prompts.withIndex()) {
                val (prompt, tensors) = pair
                val timed = Timed(clock)
                val t0 = clock()
                val output = generate(runner, r, prompt, tensors, timed, k, last = i == warmup + runs - 1)
                val elapsed = (clock() - t0) / 1e6
                if (firstInference == null) firstInference = elapsed
                if (measured) {
                    endToEnd.add(elapsed)
                    for ((name, calls) in timed.calls) componentMs.getOrPut(name) { ArrayList() }.addAll(calls)
                }
                output?.let { outputs.add(it) }
                done++
                sampleMemory()
            }
        }
        status(State.WRITING, done, total, "writing the result")
        val timings = Timings(initMs, firstInference, componentMs.mapValues { summarize(it.value) }, summarize(endToEnd))
        val file = write(result(timings = timings, outputs = outputs))
        status(State.DONE, done, total, "done")
        return file
    }

    private fun generate(runner: ComponentRunner, r: Request, prompt: PromptSpec, tensors: Map<String, Tensor>, timed: Timed, index: Int, last: Boolean): Output? =
        when (val kind = r.pipeline.kind) {
            "sana" -> {
                val image = SanaPipeline.generate(runner, r.pipeline, tensors, timed)
                resolution = listOf(image.shape[1], image.shape[2])
                if (!last) {
                    null
                } else {
                    FileTools.writeAtomic(File(outDir, "images/$index.png"), Png.encode(image))
                    Output(prompt.text, prompt.seed, image = "images/$index.png")
                }
            }
            "gemma" -> {
                // the CLI sends the prompt's token ids as "prompt_ids" [1, L] (models/gemma.py bench_inputs)
                val ids = (tensors["prompt_ids"] ?: tensors["input_ids"]) as? LongTensor
                    ?: throw BenchError(ErrorKind.INVALID_REQUEST, "a Gemma prompt needs an int64 prompt_ids tensor")
                val spec = GemmaSpec.of(r.pipeline, session("prefill").inputs, session("decode").inputs)
                val t0 = clock() // tokens per second end to end, prefill included (as pipeline.gemma_generate)
                val embedding = if (spec.hostEmbedding) embeddingTable(r) else null
                val tokens = GemmaDecoder.greedy(runner, spec, ids.data.toList(), r.pipeline.maxNewTokens ?: 32, r.pipeline.eosTokenId, timed, embedding)
                val seconds = (clock() - t0) / 1e9
                if (!last) null else Output(prompt.text, prompt.seed, tokens = tokens, tokensPerSecond = if (seconds > 0) tokens.size / seconds else 0.0)
            }
            else -> throw BenchError(ErrorKind.INVALID_REQUEST, "unknown pipeline kind '$kind'")
        }

    private fun session(name: String) = sessions[name] ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the pipeline needs a '$name' component")
}
