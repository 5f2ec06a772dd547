package dev.fraqat.deploy.core

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtEpDevice
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtLoggingLevel
import ai.onnxruntime.OrtSession
import java.io.File
import java.nio.FloatBuffer
import java.nio.IntBuffer
import java.nio.LongBuffer
import ai.onnxruntime.TensorInfo as OrtTensorInfo

/**
 * What differs between the phone and the host under [OrtBackend]: where the QNN plugin EP library is, what the
 * device is, and the provider options only one side needs.
 *
 * On the phone (the app's `HtpBackend`): the library from the QNN AAR in the app's native library folder, the
 * phone's own HTP. On the host (`dev.fraqat.deploy.host.HostEngine`): the library from the `onnxruntime-qnn`
 * x86_64 wheel, whose `libQnnHtp.so` is the HTP *simulator*, told which SoC to simulate with `soc_model`.
 */
interface OrtPlatform {
    /** Checks that this device can have an HTP at all and sets what the QNN libraries read from the environment. */
    fun prepare() {}

    /** The QNN plugin execution provider library (`libonnxruntime_providers_qnn.so`). */
    fun epLibraryPath(): String

    fun device(onnxruntimeVersion: String?): DeviceInfo

    /** QNN provider options added to (or overriding) the common ones, for [request]. */
    fun providerOptions(request: Request): Map<String, String> = emptyMap()

    val intraOpThreads: Int get() = 2

    val logLevel: OrtLoggingLevel get() = OrtLoggingLevel.ORT_LOGGING_LEVEL_WARNING
}

/**
 * Compiled components as ONNX Runtime sessions on the Hexagon HTP: the EPContext model (`<name>_ctx.onnx`, its
 * `.bin` beside it) opened with the QNN plugin execution provider (registered with
 * `OrtEnvironment.registerExecutionProviderLibrary`, its EP devices passed to the session options), backend `htp`.
 * There is no silent CPU fallback: without the QNN EP or an HTP the backend says so ([ErrorKind.HTP_UNAVAILABLE]);
 * an EPContext node cannot run on the CPU, so a context binary the HTP refuses is an error ([ErrorKind.HTP_ERROR]).
 * Only the float <-> quantized conversions at the graph boundary run on the CPU, by design (the CLI's compile step
 * fails on any other CPU node).
 */
class OrtBackend(private val platform: OrtPlatform) : Backend {
    private val env: OrtEnvironment by lazy {
        try {
            OrtEnvironment.getEnvironment(platform.logLevel, "fraqat")
        } catch (e: LinkageError) { // UnsatisfiedLinkError, or the class initializer that loads the library failed
            throw BenchError(ErrorKind.HTP_UNAVAILABLE, "cannot load ONNX Runtime's native library: ${e.message ?: e.cause?.message}")
        }
    }

    override val device: DeviceInfo by lazy { platform.device(runCatching { env.version }.getOrNull()) }

    private val qnnDevices: List<OrtEpDevice> by lazy { registerQnn() }

    private fun registerQnn(): List<OrtEpDevice> {
        platform.prepare()
        val library = platform.epLibraryPath()
        try {
            env.registerExecutionProviderLibrary(EP_NAME, library)
        } catch (e: OrtException) {
            if (e.message?.contains("already registered") != true) {
                throw BenchError(ErrorKind.HTP_UNAVAILABLE, "cannot load the QNN execution provider ($library): ${firstLine(e)}")
            }
        } catch (e: LinkageError) {
            throw BenchError(ErrorKind.HTP_UNAVAILABLE, "cannot load the QNN execution provider ($library): ${e.message}")
        }
        val devices = env.epDevices.filter { it.epName == EP_NAME }
        if (devices.isEmpty()) throw BenchError(ErrorKind.HTP_UNAVAILABLE, "the QNN execution provider offers no device here")
        return devices
    }

    /** The QNN provider options for [request]: the HTP backend, the performance mode, then the platform's own. */
    fun providerOptions(request: Request): Map<String, String> =
        linkedMapOf("backend_type" to "htp", "htp_performance_mode" to (request.config.performanceMode ?: "burst")) +
            platform.providerOptions(request)

    override fun open(component: String, ctxOnnx: File, request: Request): ComponentSession {
        val devices = qnnDevices
        val options = OrtSession.SessionOptions()
        val session = try {
            options.addExecutionProvider(devices, providerOptions(request))
            // "1" would refuse the boundary conversions the EPContext model keeps on the CPU (see the class comment)
            options.addConfigEntry("session.disable_cpu_ep_fallback", "0")
            options.setIntraOpNumThreads(platform.intraOpThreads)
            options.setInterOpNumThreads(1)
            env.createSession(ctxOnnx.absolutePath, options)
        } catch (e: OrtException) {
            val message = firstLine(e)
            val unavailable = listOf("Unable to load backend", "Failed to load", "no HTP", "dlopen").any { message.contains(it, ignoreCase = true) }
            throw BenchError(if (unavailable) ErrorKind.HTP_UNAVAILABLE else ErrorKind.HTP_ERROR, "cannot open ${ctxOnnx.name} on the HTP: $message")
        } finally {
            options.close()
        }
        return OrtComponentSession(env, component, session)
    }

    companion object {
        /** The name the QNN plugin registers under (and its EP devices carry). */
        const val EP_NAME = "QNNExecutionProvider"

        internal fun firstLine(e: Throwable) = e.message.orEmpty().lineSequence().firstOrNull { it.isNotBlank() }.orEmpty()
    }
}

private class OrtComponentSession(private val env: OrtEnvironment, private val component: String, private val session: OrtSession) : ComponentSession {
    private val infos: Map<String, OrtTensorInfo> = session.inputInfo.mapValues { it.value.info as OrtTensorInfo }

    override val inputs: Map<String, TensorInfo> = infos.mapValues { (_, info) ->
        val dtype = when (info.type) {
            OnnxJavaType.FLOAT -> DType.FLOAT32
            OnnxJavaType.INT64 -> DType.INT64
            OnnxJavaType.INT32 -> DType.INT32
            else -> null
        }
        TensorInfo(dtype, info.shape.map { it.toInt() }.toIntArray())
    }

    override fun run(feed: Map<String, Tensor>): Map<String, Tensor> {
        val tensors = LinkedHashMap<String, OnnxTensor>()
        try {
            for ((name, t) in feed) tensors[name] = onnx(name, t)
            session.run(tensors).use { result ->
                val out = LinkedHashMap<String, Tensor>()
                for ((name, value) in result) out[name] = fromOnnx(name, value as OnnxTensor)
                return out
            }
        } catch (e: OrtException) {
            throw BenchError(ErrorKind.HTP_ERROR, "$component failed on the HTP: ${OrtBackend.firstLine(e)}")
        } finally {
            tensors.values.forEach { it.close() }
        }
    }

    /** A tensor of the dtype the graph expects (token ids arrive as int64 from the tokenizer, for instance). */
    private fun onnx(name: String, t: Tensor): OnnxTensor {
        val shape = t.shape.map { it.toLong() }.toLongArray()
        val want = infos[name]?.type
        return when {
            want == OnnxJavaType.INT32 && t is LongTensor -> OnnxTensor.createTensor(env, IntBuffer.wrap(IntArray(t.size) { t.data[it].toInt() }), shape)
            want == OnnxJavaType.INT64 && t is IntTensor -> OnnxTensor.createTensor(env, LongBuffer.wrap(LongArray(t.size) { t.data[it].toLong() }), shape)
            t is FloatTensor -> OnnxTensor.createTensor(env, FloatBuffer.wrap(t.data), shape)
            t is LongTensor -> OnnxTensor.createTensor(env, LongBuffer.wrap(t.data), shape)
            t is IntTensor -> OnnxTensor.createTensor(env, IntBuffer.wrap(t.data), shape)
            else -> throw BenchError(ErrorKind.INTERNAL, "cannot feed ${t.describe()} to $name")
        }
    }

    private fun fromOnnx(name: String, value: OnnxTensor): Tensor {
        val shape = value.info.shape.map { it.toInt() }.toIntArray()
        return when (value.info.type) {
            OnnxJavaType.FLOAT -> FloatTensor(shape, value.floatBuffer.let { b -> FloatArray(b.remaining()).also { b.get(it) } })
            OnnxJavaType.INT64 -> LongTensor(shape, value.longBuffer.let { b -> LongArray(b.remaining()).also { b.get(it) } })
            OnnxJavaType.INT32 -> IntTensor(shape, value.intBuffer.let { b -> IntArray(b.remaining()).also { b.get(it) } })
            else -> throw BenchError(ErrorKind.HTP_ERROR, "$component output $name is ${value.info.type}, not float32/int64/int32")
        }
    }

    override fun close() = session.close()
}
