// MathJax settings (loaded before MathJax, at the end of the body, so the page is already parsed).
// Markdown pages: pymdownx.arithmatex (generic mode) wraps each formula in \( \) or \[ \] inside an element of
// class "arithmatex"; only those are typeset. Notebook pages (mkdocs-jupyter): markdown cells keep $...$ and
// $$...$$ as written, so there the dollar delimiters are on inside markdown cells (which sit in a jp-InputArea
// like code cells); code and outputs are left alone.
const isNotebook = document.querySelector(".jp-Notebook") !== null;

window.MathJax = {
  tex: {
    inlineMath: isNotebook ? [["$", "$"], ["\\(", "\\)"]] : [["\\(", "\\)"]],
    displayMath: isNotebook ? [["$$", "$$"], ["\\[", "\\]"]] : [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: isNotebook
    ? { ignoreHtmlClass: "tex2jax_ignore|jp-InputArea|jp-OutputArea", processHtmlClass: "jp-RenderedMarkdown|arithmatex" }
    : { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
