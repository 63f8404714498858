"""``messages``: the human text of gatekeeper's own answers, by reason code."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from gatekeeper.config.reader import Section

# Reason codes answered to clients (issue #2); messages are keyed by them.
REASONS: tuple[str, ...] = (
    "busy",
    "engine_down",
    "cpu",
    "memory",
    # Opt-in signals of a real engine box (issue #11 §3).
    "cpu_pressure",
    "memory_pressure",
    "io_pressure",
    "gpu_memory",
    "gpu_utilization",
    "blocked",
    "draining",
    "upstream_unavailable",
    "upstream_timeout",
    "upstream_busy",
    # The waiting room of queue routes (issue #9).
    "queue_full",
    "queue_timeout",
    "client_limit",
)
# Placeholders a message may use; anything else is a config error, not a KeyError at 3 a.m.
# Every message may use every field (a field that does not apply renders as 0);
# max_wait is rendered as whole seconds.
MESSAGE_FIELDS = frozenset(
    {
        "retry_after",
        "in_flight",
        "max_in_flight",
        "cpu_percent",
        "memory_percent",
        "cpu_pressure",
        "memory_pressure",
        "io_pressure",
        "gpu_memory_percent",
        "gpu_utilization_percent",
        "route",
        "waiting",
        "max_waiting",
        "per_client",
        "max_wait",
        "position",
    }
)

# The seed's users read Chinese; the English half serves everyone else.
DEFAULT_MESSAGES: Mapping[str, str] = {
    "busy": "引擎正在生成另一首歌曲（每首约 5–15 分钟），请约 {retry_after} 秒后再试。"
    " / The engine is busy generating another song; please retry in about {retry_after} s.",
    "cpu": "服务器 CPU 负载过高（{cpu_percent:.0f}%），暂不接受新的生成任务，"
    "请约 {retry_after} 秒后再试。"
    " / The server CPU is overloaded ({cpu_percent:.0f}%); please retry in about {retry_after} s.",
    "memory": "服务器内存不足（已用 {memory_percent:.0f}%），暂不接受新的生成任务，"
    "请约 {retry_after} 秒后再试。"
    " / The server is low on memory ({memory_percent:.0f}% used);"
    " please retry in about {retry_after} s.",
    "engine_down": "音乐生成引擎暂时不可用（健康检查失败），暂不接受新的生成任务，"
    "请约 {retry_after} 秒后再试。"
    " / The music engine is not answering its health check; no new generation can start."
    " Please retry in about {retry_after} s.",
    "cpu_pressure": "服务器 CPU 争用严重（任务等待 CPU 的时间占 {cpu_pressure:.0f}%），"
    "暂不接受新的生成任务，请约 {retry_after} 秒后再试。"
    " / The server's CPUs are saturated (tasks waited for a CPU {cpu_pressure:.0f}% of"
    " the time); please retry in about {retry_after} s.",
    "memory_pressure": "服务器内存压力过高（因内存停顿 {memory_pressure:.0f}% 的时间），"
    "暂不接受新的生成任务，请约 {retry_after} 秒后再试。"
    " / The server is thrashing for memory (stalled {memory_pressure:.0f}% of the time);"
    " please retry in about {retry_after} s.",
    "io_pressure": "服务器磁盘 I/O 压力过高（因 I/O 停顿 {io_pressure:.0f}% 的时间），"
    "暂不接受新的生成任务，请约 {retry_after} 秒后再试。"
    " / The server's disks are saturated (stalled on I/O {io_pressure:.0f}% of the time);"
    " please retry in about {retry_after} s.",
    "gpu_memory": "GPU 显存不足（已用 {gpu_memory_percent:.0f}%），暂不接受新的生成任务，"
    "请约 {retry_after} 秒后再试。"
    " / The GPU is low on memory ({gpu_memory_percent:.0f}% used);"
    " please retry in about {retry_after} s.",
    "gpu_utilization": "GPU 负载过高（{gpu_utilization_percent:.0f}%），暂不接受新的生成任务，"
    "请约 {retry_after} 秒后再试。"
    " / The GPU is fully busy ({gpu_utilization_percent:.0f}%);"
    " please retry in about {retry_after} s.",
    "blocked": "该接口已停用。 / This endpoint is disabled.",
    "draining": "服务正在重启，暂不接受新的生成任务，请约 {retry_after} 秒后再试。"
    " / The service is restarting and accepts no new generations;"
    " please retry in about {retry_after} s.",
    "upstream_unavailable": "音乐生成引擎暂时无法连接，请稍后再试。"
    " / The music engine cannot be reached; please try again later.",
    "upstream_timeout": "音乐生成引擎响应超时。 / The music engine did not answer in time.",
    "upstream_busy": "音乐生成引擎连接繁忙，请稍后再试。"
    " / All connections to the music engine are busy; please try again shortly.",
    "queue_full": "排队人数已满（{waiting}/{max_waiting}），请约 {retry_after} 秒后再试。"
    " / The queue is full ({waiting} waiting); please retry in about {retry_after} s.",
    "queue_timeout": "已排队等待 {max_wait} 秒仍未轮到，请约 {retry_after} 秒后再试。"
    " / You waited {max_wait} s without being served; please retry in about {retry_after} s.",
    "client_limit": "您已有 {per_client} 个生成任务在排队或进行中，"
    "请等其中一个完成后再提交（约 {retry_after} 秒）。"
    " / You already have {per_client} generations waiting or running;"
    " please submit another when one is done (in about {retry_after} s).",
}


def check_message(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return "must be a non-empty string"
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
    except ValueError as exc:
        return f"invalid format string: {exc}"
    unknown = {n.split(".")[0].split("[")[0] for n in names} - MESSAGE_FIELDS
    if "" in unknown or unknown:
        return (
            "unknown placeholder(s) {"
            + "}, {".join(sorted(unknown))
            + "}; allowed: "
            + ", ".join(sorted(MESSAGE_FIELDS))
        )
    return None


def read_messages(sec: Section) -> dict[str, str]:
    messages = dict(DEFAULT_MESSAGES)
    for key in REASONS:
        messages[key] = sec.get(key, messages[key], check_message)
    for key, (key_node, _) in sec.items.items():
        if key not in REASONS:
            sec.problem(key, key_node, "unknown reason code; known: " + ", ".join(REASONS))
            sec.used.add(key)
    sec.close()
    return messages
