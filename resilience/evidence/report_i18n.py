"""Labels of the evidence reports in English and Chinese (the incident field names follow the
incident report template: 信息来源, 影响范围, 事件性质, 事件发展趋势, 采取的措施)."""

from __future__ import annotations

from typing import Any

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "run_title": "Run report", "period_title": "Period report", "summary": "Summary",
        "run": "Run", "action": "Action", "kind": "Kind", "outcome": "Outcome", "started": "Started (UTC)",
        "ended": "Ended (UTC)", "duration": "Duration", "by": "Run by", "dry_run": "Dry run — nothing was changed",
        "params": "Parameters", "error": "Error", "steps": "Steps", "step": "Step", "host": "Host",
        "start": "Start (UTC)", "timeline": "Timeline", "chart": "Step durations on the run's time axis",
        "objectives": "Recovery objectives", "objective": "Objective", "measured": "Measured",
        "target": "Target", "met": "Met", "yes": "yes", "no": "no", "none": "none", "no_target": "no target",
        "artifacts": "Evidence artifacts", "artifact": "Artifact", "size": "Size", "sha256": "SHA-256",
        "file_state": "File", "verification": "Ledger verification",
        "verify_ok": "The ledger's signatures verify",
        "verify_bad": "The ledger's signatures do not verify",
        "records": "records", "runs": "runs", "key": "signing key", "first_bad": "first bad record",
        "reason": "reason", "run_affected": "The records of this run may be affected.",
        "run_unaffected": "The records of this run come before the damage.",
        "unreadable": "lines that are not valid JSON",
        "incident": "Incident", "severity": "Severity", "severity_reason": "Why",
        "report_upward": "Report upward", "upward_yes": "YES — report to the supervising authority",
        "upward_no": "no (recorded locally)", "source": "Source of the information", "scope": "Scope of impact",
        "nature": "Nature of the event", "trend": "Trend", "measures": "Measures taken",
        "plan": "Drill plan", "period": "Period", "from": "From", "to": "To (exclusive)",
        "generated": "Generated (UTC)", "backups": "Backups", "site": "Site", "count": "Runs",
        "successes": "Succeeded", "failures": "Failed", "last": "Last run", "last_ok": "Last good backup",
        "stored": "Stored in period", "total": "Size of last good", "verifies": "Repository verifies",
        "restores": "Restores", "snapshot": "Snapshot", "drills": "Drills", "incidents": "Incidents",
        "other": "Other runs", "dry_runs": "Dry runs (not counted above)", "totals": "At a glance",
        "runs_in_period": "Runs in the period", "backup_failures": "Failed site backups",
        "drills_failed": "Drills failed or over target", "incidents_upward": "Incidents reported upward",
        "nothing": "none in this period", "how_verify": "Check independently with",
        "from_ledger": "Every figure is computed from the evidence ledger",
    },
    "zh": {
        "run_title": "运行报告", "period_title": "周期报告", "summary": "概要",
        "run": "运行编号", "action": "操作", "kind": "类别", "outcome": "结果", "started": "开始时间（UTC）",
        "ended": "结束时间（UTC）", "duration": "耗时", "by": "执行者", "dry_run": "演练模式（未做任何更改）",
        "params": "参数", "error": "错误", "steps": "步骤", "step": "步骤", "host": "主机",
        "start": "开始（UTC）", "timeline": "时间线", "chart": "各步骤在运行时间轴上的耗时",
        "objectives": "恢复目标", "objective": "指标", "measured": "实测",
        "target": "目标", "met": "达标", "yes": "是", "no": "否", "none": "无", "no_target": "无目标",
        "artifacts": "证据文件", "artifact": "文件", "size": "大小", "sha256": "SHA-256 摘要",
        "file_state": "文件状态", "verification": "证据账本校验",
        "verify_ok": "证据账本签名校验通过",
        "verify_bad": "证据账本签名校验未通过",
        "records": "条记录", "runs": "次运行", "key": "签名密钥", "first_bad": "首条异常记录",
        "reason": "原因", "run_affected": "本次运行的记录可能受到影响。",
        "run_unaffected": "本次运行的记录位于受损位置之前。",
        "unreadable": "行不是有效的 JSON",
        "incident": "安全事件", "severity": "事件级别", "severity_reason": "定级依据",
        "report_upward": "是否上报", "upward_yes": "是——须向主管部门报告",
        "upward_no": "否（本地记录）", "source": "信息来源", "scope": "影响范围",
        "nature": "事件性质", "trend": "事件发展趋势", "measures": "采取的措施",
        "plan": "演练方案", "period": "周期", "from": "起", "to": "止（不含）",
        "generated": "生成时间（UTC）", "backups": "备份", "site": "站点", "count": "次数",
        "successes": "成功", "failures": "失败", "last": "最近一次", "last_ok": "最近一次成功备份",
        "stored": "本期新增存储", "total": "最近成功备份的数据量", "verifies": "备份库校验",
        "restores": "恢复", "snapshot": "快照", "drills": "应急演练", "incidents": "安全事件",
        "other": "其他运行", "dry_runs": "演练模式运行（不计入以上统计）", "totals": "总览",
        "runs_in_period": "本期运行次数", "backup_failures": "站点备份失败次数",
        "drills_failed": "失败或未达标的演练", "incidents_upward": "需上报的安全事件",
        "nothing": "本期无", "how_verify": "可独立核验：",
        "from_ledger": "所有数据均由证据账本计算得出",
    },
}

# Values recorded in the ledger that have a translation (outcomes, severities, kinds, states).
VALUES: dict[str, dict[str, str]] = {
    "zh": {
        "ok": "成功", "failed": "失败", "partial": "部分成功", "cancelled": "已取消", "skipped": "已跳过",
        "incomplete": "未完成", "minor": "一般", "major": "较大", "critical": "重大",
        "intact": "与摘要一致", "changed": "已被改动", "missing": "缺失", "backup": "备份", "verify": "校验", "restore": "恢复",
        "drill": "应急演练", "incident": "安全事件", "other": "其他",
    },
    "en": {"intact": "matches digest", "changed": "changed since recorded", "missing": "missing"},
}


def translate(lang: str, value: Any) -> str:
    """``value`` in ``lang`` when it is a known ledger value, else unchanged (as text)."""
    text = "" if value is None else str(value)
    return VALUES.get(lang, {}).get(text, text)
