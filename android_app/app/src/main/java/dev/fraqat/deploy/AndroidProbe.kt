package dev.fraqat.deploy

import android.content.Context
import android.os.Debug
import android.os.PowerManager
import dev.fraqat.deploy.core.DeviceProbe
import dev.fraqat.deploy.core.Memory
import java.io.File
import kotlin.concurrent.thread

/**
 * The app's own memory and thermal readings: PSS from Debug.getMemoryInfo, the peak RSS (VmHWM) from
 * /proc/self/status, the native heap in use (ONNX Runtime's and QNN's allocations live there), the DMA-BUF buffers
 * the process holds ([DmaBuf]: the NPU's shared memory, which PSS and VmHWM leave out), and PowerManager's thermal
 * status (0 none .. 6 shutdown).
 *
 * With [sampleEveryMs], a background thread also samples the native heap and DMA-BUF every that many ms, so the
 * peaks are those reached *during* inference (buffers the HTP frees after a run are gone by the time the engine
 * asks); PSS, the costliest reading, is taken when the engine asks (after opening, after each generation).
 * VmHWM is a peak by itself. [close] stops the sampler.
 */
class AndroidProbe(private val context: Context, sampleEveryMs: Long? = null) : DeviceProbe, AutoCloseable {
    @Volatile private var sampled = Memory.UNKNOWN
    @Volatile private var running = sampleEveryMs != null
    private val sampler = sampleEveryMs?.let { every ->
        thread(name = "fraqat-memory", isDaemon = true, priority = Thread.MIN_PRIORITY) {
            while (running) {
                val now = Memory(null, null, nativeHeapMb(), "app", DmaBuf.currentMb())
                synchronized(this) { sampled = sampled.max(now) }
                try {
                    Thread.sleep(every)
                } catch (e: InterruptedException) {
                    break
                }
            }
        }
    }

    override fun memory(): Memory {
        val info = Debug.MemoryInfo()
        Debug.getMemoryInfo(info)
        val now = Memory(
            peakPss = info.totalPss / 1024.0,
            peakRss = vmHwmMb(),
            nativeHeap = nativeHeapMb(),
            source = "app",
            peakDmabuf = DmaBuf.currentMb(),
        )
        return synchronized(this) { sampled.max(now) }
    }

    override fun thermalStatus(): Int? = runCatching { context.getSystemService(PowerManager::class.java)?.currentThermalStatus }.getOrNull()

    override fun close() {
        running = false
        sampler?.interrupt()
    }

    private fun nativeHeapMb() = Debug.getNativeHeapAllocatedSize() / (1024.0 * 1024.0)

    private fun vmHwmMb(): Double? = runCatching {
        File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmHWM:") }?.split(Regex("\\s+"))?.get(1)?.toDouble()?.div(1024.0)
    }.getOrNull()
}
