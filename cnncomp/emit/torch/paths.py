"""Layer paths for --emit torch: where each layer's submodule sits, so that `state_dict()` keys
are the spec's weight names.

`as conv1` is `self.conv1`; a dotted name, a numbered stage or a name template goes through
`Modules` containers (`self.downsample[0]`, `self.features[5 + 2 * i]`,
`self[f"stage{i}"].norm`). Stage numbers follow the elaborator's statement counter (see
counters.py). `LayerPaths` is the part of a class generator (classgen.ClassGen) that writes
these paths and creates the containers where every use can see them.
"""

from __future__ import annotations

import keyword

from cnncomp.emit.torch.names import Stmt
from cnncomp.emit.torch.unsupported import NotSupported
from cnncomp.emit.torch.values import py_string
from cnncomp.errors import Loc
from cnncomp.frontend.cnn import ast


def split_dotted(text: str) -> list[str]:
    """A template name split at the dots outside `{...}`."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


class LayerPaths:
    """Layer paths as Python and the containers they need (a mixin of ClassGen)."""

    def stage_path(self, stage: ast.LayerStage, st: Stmt) -> tuple:
        """The layer path of a stage, relative to this class: a tuple of parts."""
        if stage.alias is None:
            return st.path + (("sym", st.counter),)
        if not stage.alias.is_template:
            return tuple(("static", p) for p in stage.alias.text.split("."))
        return tuple(self.template_part(p, stage.alias.loc) for p in split_dotted(stage.alias.text))

    def template_part(self, text: str, loc: Loc) -> tuple:
        from cnncomp.frontend.cnn.parser import parse

        if "{" not in text:
            return ("static", text)
        pieces: list = []
        rest = text
        while "{" in rest:
            before, _, after = rest.partition("{")
            inner, closed, rest = after.partition("}")
            if not closed:
                raise NotSupported("--emit torch: '{' in a layer name is never closed", loc)
            program = parse(f"let _ = {inner}\n", f"{loc.file} (name template)")
            pieces += [before, program.stmts[0].value]
        pieces.append(rest)
        return ("template", tuple(pieces))

    def part_code(self, part: tuple, mode: str, owner_is_self: bool) -> str:
        """`.name` or `[key]` for one part of a layer path."""
        kind, value = part
        if kind == "static":
            if value.isdigit() and str(int(value)) == value:
                self._item(owner_is_self)
                return f"[{value}]"
            if value.isidentifier() and not keyword.iskeyword(value) and value not in self.em.module_attrs \
                    and not (owner_is_self and value in self.stored.values()) and not value.startswith("_"):
                return f".{value}"
            self._item(owner_is_self)
            return f"[{py_string(value)}]"
        self._item(owner_is_self)
        if kind == "sym":
            return f"[{self.sym_code(value, mode)[0]}]"
        if len(value) == 3 and value[0] == value[2] == "":  # "{i}": Modules keys go through str()
            return f"[{self.vcode(value[1], mode)[0]}]"
        texts, simple = [], True
        for piece in value:
            if isinstance(piece, str):
                texts.append(("lit", piece))
            else:
                code = self.vcode(piece, mode)[0]
                simple = simple and not any(c in code for c in "\"'{}\\")
                texts.append(("code", code))
        if simple:
            return "[f\"" + "".join(t.replace("{", "{{").replace("}", "}}") if k == "lit" else "{" + t + "}"
                                   for k, t in texts) + "\"]"
        return "[" + " + ".join(py_string(t) if k == "lit" else f"str({t})" for k, t in texts if t) + "]"

    def _item(self, owner_is_self: bool) -> None:
        if owner_is_self:
            self.item_on_self = True
        self.em.helpers.add("Modules")

    def path_code(self, path: tuple, mode: str) -> str:
        return "self" + "".join(self.part_code(p, mode, i == 0) for i, p in enumerate(path))

    def ensure_containers(self, path: tuple) -> None:
        """Containers for every proper prefix of a layer path, created where all their uses can see them."""
        for n in range(1, len(path)):
            prefix = path[:n]
            code = self.path_code(prefix, "init")
            if all(kind == "static" for kind, _ in prefix):
                position = self.init.position()
                if code not in self.container_uses:
                    self.container_uses[code] = (position, n)
                else:
                    first, depth = self.container_uses[code]
                    common = []
                    for (b1, i1), (b2, i2) in zip(first, position):
                        if b1 is not b2:
                            break
                        common.append((b1, min(i1, i2)))
                    self.container_uses[code] = (common, depth)
            else:
                if any(code in b.created for b in self.init.stack):
                    continue
                self.init.stack[-1].created.add(code)
                self.init.line(f"{code} = Modules()")
            self.em.helpers.add("Modules")

    def place_containers(self) -> None:
        """Insert the creation of the static containers: before their first use, outside loops."""
        inserts = []
        for code, (chain, depth) in self.container_uses.items():
            keep = []
            for block, index in chain:
                if block.kind == "for":
                    break
                keep.append((block, index))
            block, index = keep[-1]
            if len(keep) < len(chain):  # hoisted out of a loop: before the loop's block
                index = keep[-1][1]
            inserts.append((block, index, depth, code))
        for block, index, depth, code in sorted(inserts, key=lambda t: (-t[1], -t[2])):
            block.items.insert(index, f"{code} = Modules()")
