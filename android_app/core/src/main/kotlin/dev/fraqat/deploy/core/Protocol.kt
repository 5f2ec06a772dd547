package dev.fraqat.deploy.core

import org.json.JSONException
import java.io.File

/**
 * The request / status / result protocol shared with the CLI (`fraqat_deploy/device/protocol.py`, the JSON Schemas
 * in `fraqat_deploy/device/schemas/`). The CLI pushes `files/runs/<id>/request.json`, the compiled components under
 * `files/models/` and the input tensors, then starts [Protocol.ACTIVITY] with the request's absolute path.
 */
object Protocol {
    const val SCHEMA_VERSION = 1
    const val PACKAGE = "dev.fraqat.deploy"
    const val ACTIVITY = ".BenchmarkActivity"
    const val FILES_DIR = "/sdcard/Android/data/$PACKAGE/files"
    const val MODELS_DIR = "models"
    const val RUNS_DIR = "runs"
    const val REQUEST_EXTRA = "request"
    val MESSAGES = listOf("request", "status", "result")

    fun runDir(requestId: String) = "$RUNS_DIR/$requestId"
}

/** The kinds of error a result can carry (the result schema's `error.kind`). */
enum class ErrorKind(val json: String) {
    INVALID_REQUEST("invalid_request"),
    MODEL_MISSING("model_missing"),
    OUT_OF_MEMORY("out_of_memory"),
    HTP_UNAVAILABLE("htp_unavailable"),
    HTP_ERROR("htp_error"),
    STORAGE_FULL("storage_full"),
    INTERNAL("internal"),
    ;

    companion object {
        fun of(json: String) = entries.firstOrNull { it.json == json } ?: throw JSONException("unknown error kind '$json'")
    }
}

/** An error the benchmark reports in its result instead of crashing. */
class BenchError(val kind: ErrorKind, message: String) : Exception(message)

/** A message that does not follow its schema. */
class ProtocolException(message: String) : Exception(message)

/** The three schemas, loaded once; [validate] names the first violation as the Python side does. */
class Schemas(private val byMessage: Map<String, JsonSchema>) {
    fun validate(message: String, data: Any?) {
        val schema = byMessage[message] ?: throw IllegalArgumentException("unknown message '$message'")
        val first = schema.errors(data).firstOrNull() ?: return
        throw ProtocolException("$message.json is not valid at ${first.path.ifEmpty { "(top)" }}: ${first.message}")
    }

    companion object {
        /** From `<message>.schema.json` texts, e.g. read from the app's assets or the repository. */
        fun load(read: (String) -> String): Schemas =
            Schemas(Protocol.MESSAGES.associateWith { JsonSchema.parse(read("$it.schema.json")) })

        fun fromDirectory(dir: File): Schemas = load { File(dir, it).readText() }
    }
}

// ---------------------------------------------------------------- request

data class FileEntry(val path: String, val sha256: String, val bytes: Long) {
    fun toJson(): Map<String, Any?> = linkedMapOf("path" to path, "sha256" to sha256, "bytes" to bytes)
}

data class ComponentSpec(
    val name: String,
    val onnx: String,
    val files: List<FileEntry>,
    val inputs: List<String>,
    val outputs: List<String>,
) {
    fun toJson(): Map<String, Any?> =
        linkedMapOf("onnx" to onnx, "files" to files.map { it.toJson() }, "inputs" to inputs, "outputs" to outputs)
}

enum class DType(val json: String, val bytes: Int) {
    FLOAT32("float32", 4),
    INT64("int64", 8),
    INT32("int32", 4),
    ;

    companion object {
        fun of(json: String) = entries.firstOrNull { it.json == json } ?: throw JSONException("unknown dtype '$json'")
    }
}

data class TensorSpec(val path: String, val dtype: DType, val shape: List<Int>) {
    val size: Long get() = shape.fold(1L) { a, b -> a * b }

    fun toJson(): Map<String, Any?> = linkedMapOf("path" to path, "dtype" to dtype.json, "shape" to shape)
}

data class PromptSpec(val text: String, val seed: Long, val tensors: Map<String, TensorSpec>) {
    fun toJson(): Map<String, Any?> =
        linkedMapOf("text" to text, "seed" to seed, "tensors" to tensors.mapValues { it.value.toJson() })
}

/** diffusers' sinusoidal timestep projection settings (`Timesteps(...)`). */
data class TimeProj(
    val channels: Int,
    val flipSinToCos: Boolean,
    val downscaleFreqShift: Double,
    val maxPeriod: Double,
    val scale: Double,
) {
    fun toJson(): Map<String, Any?> = linkedMapOf(
        "channels" to channels, "flip_sin_to_cos" to flipSinToCos, "downscale_freq_shift" to downscaleFreqShift,
        "max_period" to maxPeriod, "scale" to scale,
    )

    companion object {
        fun fromJson(o: Map<String, Any?>) = TimeProj(
            o.int("channels"), o.bool("flip_sin_to_cos"), o.double("downscale_freq_shift"), o.double("max_period"),
            o.double("scale"),
        )
    }
}

/** The request's `pipeline`: what to do with the components. Keys this app does not know are kept in [raw]. */
data class PipelineSpec(val raw: Map<String, Any?>) {
    val kind: String get() = raw.str("kind")
    val steps: Int get() = raw.intOrNull("steps") ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the pipeline has no steps")
    val guidance: Double get() = raw.doubleOrNull("guidance") ?: 1.0
    val flowShift: Double get() = raw.doubleOrNull("flow_shift") ?: 1.0
    val timestepScale: Double get() = raw.doubleOrNull("timestep_scale") ?: 1.0
    val numTrainTimesteps: Int get() = raw.intOrNull("num_train_timesteps") ?: 1000
    val timeProj: TimeProj
        get() = TimeProj.fromJson(raw.objOrNull("time_proj") ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the pipeline has no time_proj"))
    val latentShape: List<Int>? get() = (raw["latent_shape"] as? List<*>)?.map { asLong(it)!!.toInt() }

    /** Sana: rows of one transformer call (the exported graph's batch); null: the whole guidance batch at once. */
    val transformerBatch: Int? get() = raw.intOrNull("transformer_batch")
    val maxNewTokens: Int? get() = raw.intOrNull("max_new_tokens")
    val context: Int? get() = raw.intOrNull("context")
    val eosTokenId: Long? get() = raw.longOrNull("eos_token_id")

    /** Gemma-2's sliding-window length, from `spec` (or a top-level `sliding_window`). */
    val slidingWindow: Int? get() = raw.objOrNull("spec")?.intOrNull("sliding_window") ?: raw.intOrNull("sliding_window")

    /** The same settings with some values replaced (the demo screen's steps, for instance). */
    fun with(vararg changes: Pair<String, Any?>) = PipelineSpec(LinkedHashMap(raw).apply { putAll(changes) })
}

data class BenchConfig(val warmup: Int, val runs: Int, val performanceMode: String?, val timeoutS: Double?) {
    fun toJson(): Map<String, Any?> = linkedMapOf<String, Any?>("warmup" to warmup, "runs" to runs).apply {
        performanceMode?.let { put("performance_mode", it) }
        timeoutS?.let { put("timeout_s", it) }
    }
}

data class Request(
    val id: String,
    val created: String?,
    val modelName: String,
    val target: String?,
    val socModel: Int?,
    val qnnVersion: String?,
    val components: Map<String, ComponentSpec>,
    val pipeline: PipelineSpec,
    val prompts: List<PromptSpec>,
    val config: BenchConfig,
    /** Gemma exported with `--embedding host`: the float16 table the graphs' `inputs_embeds` rows come from. */
    val embedding: FileEntry? = null,
) {
    /** Every file the model needs on the device: the components' and the embedding table. */
    val modelFiles: List<Pair<String, FileEntry>>
        get() = components.flatMap { (name, c) -> c.files.map { name to it } } + listOfNotNull(embedding?.let { "embedding" to it })

    fun toJson(): Map<String, Any?> {
        val model = linkedMapOf<String, Any?>("name" to modelName)
        target?.let { model["target"] = it }
        socModel?.let { model["soc_model"] = it }
        model["qnn_version"] = qnnVersion
        embedding?.let { model["embedding"] = it.toJson() }
        model["components"] = components.mapValues { it.value.toJson() }
        return linkedMapOf<String, Any?>("schema_version" to Protocol.SCHEMA_VERSION, "id" to id).apply {
            created?.let { put("created", it) }
            put("model", model)
            put("pipeline", pipeline.raw)
            put("prompts", prompts.map { it.toJson() })
            put("config", config.toJson())
        }
    }

    companion object {
        /** A request from parsed JSON (validate it against the schema first: this only reads what it needs). */
        fun fromJson(o: Map<String, Any?>): Request {
            val model = o.obj("model")
            val components = LinkedHashMap<String, ComponentSpec>()
            for ((name, c) in model.obj("components")) {
                val co = asObject(c, "component '$name'")
                components[name] = ComponentSpec(
                    name, co.str("onnx"),
                    co.list("files").map { fileEntry(it) },
                    co.list("inputs").map { it as String }, co.list("outputs").map { it as String },
                )
            }
            val prompts = o.list("prompts").map { p ->
                val po = asObject(p, "prompt")
                val tensors = LinkedHashMap<String, TensorSpec>()
                for ((name, t) in po.obj("tensors")) {
                    val to = asObject(t, "tensor '$name'")
                    tensors[name] = TensorSpec(to.str("path"), DType.of(to.str("dtype")), to.list("shape").map { asLong(it)!!.toInt() })
                }
                PromptSpec(po.str("text"), po.long("seed"), tensors)
            }
            val config = o.obj("config")
            return Request(
                o.str("id"), o.strOrNull("created"), model.str("name"), model.strOrNull("target"), model.intOrNull("soc_model"),
                model.strOrNull("qnn_version"), components, PipelineSpec(o.obj("pipeline")), prompts,
                BenchConfig(config.int("warmup"), config.int("runs"), config.strOrNull("performance_mode"), config.doubleOrNull("timeout_s")),
                model["embedding"]?.let { fileEntry(it) },
            )
        }

        private fun fileEntry(v: Any?) = asObject(v, "file").let { f -> FileEntry(f.str("path"), f.str("sha256"), f.long("bytes")) }
    }
}
