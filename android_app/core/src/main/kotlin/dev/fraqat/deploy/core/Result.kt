package dev.fraqat.deploy.core

/** n, min, p50, p90, max, mean and population standard deviation of timings in ms ([summarize]). */
data class Stats(val n: Int, val min: Double, val p50: Double, val p90: Double, val max: Double, val mean: Double, val std: Double) {
    fun toJson(): Map<String, Any?> =
        linkedMapOf("n" to n, "min" to min, "p50" to p50, "p90" to p90, "max" to max, "mean" to mean, "std" to std)

    companion object {
        fun fromJson(o: Map<String, Any?>) =
            Stats(o.int("n"), o.double("min"), o.double("p50"), o.double("p90"), o.double("max"), o.double("mean"), o.double("std"))
    }
}

/** Linear interpolation between closest ranks (numpy's default): rank `q/100 * (n-1)` of [sorted]. */
fun percentile(sorted: List<Double>, q: Double): Double {
    require(sorted.isNotEmpty()) { "no values" }
    val rank = q / 100.0 * (sorted.size - 1)
    val lo = kotlin.math.floor(rank).toInt()
    val hi = minOf(lo + 1, sorted.size - 1)
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo)
}

/** The same statistics as `protocol.summarize` (warm-up already left out), summed in the same order. */
fun summarize(valuesMs: List<Double>): Stats {
    require(valuesMs.isNotEmpty()) { "no timings to summarize" }
    val ordered = valuesMs.sorted()
    val n = ordered.size
    var total = 0.0
    for (v in ordered) total += v
    val mean = total / n
    var squares = 0.0
    for (v in ordered) squares += (v - mean) * (v - mean)
    return Stats(n, ordered.first(), percentile(ordered, 50.0), percentile(ordered, 90.0), ordered.last(), mean, kotlin.math.sqrt(squares / n))
}

data class DeviceInfo(
    val manufacturer: String,
    val model: String,
    val soc: String,
    val androidSdk: Int?,
    val runtime: String,
    val qnnVersion: String?,
    val onnxruntimeVersion: String?,
) {
    fun toJson(): Map<String, Any?> = linkedMapOf(
        "manufacturer" to manufacturer, "model" to model, "soc" to soc, "android_sdk" to androidSdk, "runtime" to runtime,
        "qnn_version" to qnnVersion, "onnxruntime_version" to onnxruntimeVersion,
    )

    companion object {
        fun fromJson(o: Map<String, Any?>) = DeviceInfo(
            o.str("manufacturer"), o.str("model"), o.str("soc"), o.intOrNull("android_sdk"), o.str("runtime"),
            o.strOrNull("qnn_version"), o.strOrNull("onnxruntime_version"),
        )
    }
}

data class ResultConfig(
    val warmup: Int,
    val runs: Int,
    val steps: Int?,
    val resolution: List<Int>?,
    val performanceMode: String?,
    val prompts: Int,
) {
    fun toJson(): Map<String, Any?> = linkedMapOf(
        "warmup" to warmup, "runs" to runs, "steps" to steps, "resolution" to resolution, "performance_mode" to performanceMode,
        "prompts" to prompts,
    )

    companion object {
        fun fromJson(o: Map<String, Any?>) = ResultConfig(
            o.int("warmup"), o.int("runs"), o.intOrNull("steps"), (o["resolution"] as? List<*>)?.map { asLong(it)!!.toInt() },
            o.strOrNull("performance_mode"), o.intOrNull("prompts") ?: 0,
        )
    }
}

data class Timings(
    val init: Double?,
    val firstInference: Double?,
    val components: Map<String, Stats>,
    val endToEnd: Stats?,
) {
    fun toJson(): Map<String, Any?> = linkedMapOf(
        "init" to init, "first_inference" to firstInference, "components" to components.mapValues { it.value.toJson() },
        "end_to_end" to endToEnd?.toJson(),
    )

    companion object {
        val EMPTY = Timings(null, null, emptyMap(), null)

        fun fromJson(o: Map<String, Any?>) = Timings(
            o.doubleOrNull("init"), o.doubleOrNull("first_inference"),
            o.obj("components").mapValues { Stats.fromJson(asObject(it.value, it.key)) }, o.objOrNull("end_to_end")?.let(Stats::fromJson),
        )
    }
}

/**
 * Memory in MB; [source] says who measured it ("app" on the phone). [peakDmabuf]: DMA-BUF buffers the process holds
 * (the NPU's shared buffers: neither PSS nor VmHWM counts them), null when the platform does not say.
 */
data class Memory(
    val peakPss: Double?,
    val peakRss: Double?,
    val nativeHeap: Double?,
    val source: String = "app",
    val peakDmabuf: Double? = null,
) {
    fun toJson(): Map<String, Any?> = linkedMapOf(
        "peak_pss" to peakPss, "peak_rss" to peakRss, "native_heap" to nativeHeap, "peak_dmabuf" to peakDmabuf, "source" to source,
    )

    /** The larger of each figure (peaks over several samples), measured by [other]'s source when this has none. */
    fun max(other: Memory) = Memory(
        maxOf(peakPss, other.peakPss), maxOf(peakRss, other.peakRss), maxOf(nativeHeap, other.nativeHeap),
        if (peakPss == null && peakRss == null && nativeHeap == null && peakDmabuf == null) other.source else source,
        maxOf(peakDmabuf, other.peakDmabuf),
    )

    private fun maxOf(a: Double?, b: Double?) = if (a == null) b else if (b == null) a else kotlin.math.max(a, b)

    companion object {
        val UNKNOWN = Memory(null, null, null)

        fun fromJson(o: Map<String, Any?>) = Memory(
            o.doubleOrNull("peak_pss"), o.doubleOrNull("peak_rss"), o.doubleOrNull("native_heap"), o.strOrNull("source") ?: "app",
            o.doubleOrNull("peak_dmabuf"),
        )
    }
}

data class Output(
    val prompt: String,
    val seed: Long,
    val image: String? = null,
    val text: String? = null,
    val tokens: List<Long>? = null,
    val tokensPerSecond: Double? = null,
) {
    fun toJson(): Map<String, Any?> = linkedMapOf<String, Any?>("prompt" to prompt, "seed" to seed).apply {
        image?.let { put("image", it) }
        text?.let { put("text", it) }
        tokens?.let { put("tokens", it) }
        tokensPerSecond?.let { put("tokens_per_second", it) }
    }

    companion object {
        fun fromJson(o: Map<String, Any?>) = Output(
            o.str("prompt"), o.long("seed"), o.strOrNull("image"), o.strOrNull("text"),
            (o["tokens"] as? List<*>)?.map { asLong(it)!! }, o.doubleOrNull("tokens_per_second"),
        )
    }
}

data class ResultError(val kind: ErrorKind, val message: String) {
    fun toJson(): Map<String, Any?> = linkedMapOf("kind" to kind.json, "message" to message)
}

/** `result.json`: written once, through a temporary file and a rename. */
data class Result(
    val requestId: String,
    val error: ResultError?,
    val device: DeviceInfo,
    val modelName: String,
    val componentHashes: Map<String, String>,
    val config: ResultConfig,
    val timings: Timings = Timings.EMPTY,
    val memory: Memory = Memory.UNKNOWN,
    val thermalBefore: Int? = null,
    val thermalAfter: Int? = null,
    val outputs: List<Output> = emptyList(),
    val errors: List<String> = emptyList(),
) {
    val ok: Boolean get() = error == null

    fun toJson(): Map<String, Any?> = linkedMapOf(
        "schema_version" to Protocol.SCHEMA_VERSION,
        "request_id" to requestId,
        "status" to if (ok) "ok" else "error",
        "error" to error?.toJson(),
        "device" to device.toJson(),
        "model" to linkedMapOf("name" to modelName, "components" to componentHashes.mapValues { linkedMapOf("sha256" to it.value) }),
        "config" to config.toJson(),
        "timings_ms" to timings.toJson(),
        "memory_mb" to memory.toJson(),
        "thermal" to linkedMapOf("before" to thermalBefore, "after" to thermalAfter),
        "outputs" to outputs.map { it.toJson() },
        "errors" to errors,
    )

    companion object {
        fun fromJson(o: Map<String, Any?>): Result {
            val error = o.objOrNull("error")?.let { ResultError(ErrorKind.of(it.str("kind")), it.str("message")) }
            val model = o.obj("model")
            val thermal = o.obj("thermal")
            return Result(
                o.str("request_id"), error, DeviceInfo.fromJson(o.obj("device")), model.str("name"),
                model.obj("components").mapValues { asObject(it.value, it.key).str("sha256") }, ResultConfig.fromJson(o.obj("config")),
                Timings.fromJson(o.obj("timings_ms")), Memory.fromJson(o.obj("memory_mb")), thermal.intOrNull("before"),
                thermal.intOrNull("after"), o.list("outputs").map { Output.fromJson(asObject(it, "output")) },
                o.list("errors").map { it as String },
            )
        }
    }
}

enum class State(val json: String) { LOADING("loading"), WARMUP("warmup"), RUNNING("running"), WRITING("writing"), DONE("done"), ERROR("error") }

/** `status.json`: rewritten as the app works, so the CLI can show progress. */
data class Status(val requestId: String, val state: State, val done: Int, val total: Int, val message: String, val updatedMs: Long) {
    fun toJson(): Map<String, Any?> = linkedMapOf(
        "schema_version" to Protocol.SCHEMA_VERSION, "request_id" to requestId, "state" to state.json, "done" to done,
        "total" to total, "message" to message, "updated_ms" to updatedMs,
    )
}
