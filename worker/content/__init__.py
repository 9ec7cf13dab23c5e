"""What a mail says: rendering the templates (sandboxed, per locale) and building the message bytes.

render.py           TemplateRenderer: a realm's templates (overrides first), text + HTML + subject
i18n.py             locales, message bundles, the fallback from pt-BR to pt to en
sandbox.py          the Jinja2 sandbox a realm's templates run in, and its caps
sandbox_codegen.py  the sandbox's code generator (loops, concatenation, counted buffers)
sandbox_filters.py  the filters and tests a template may use, guarded
limits.py           the caps: value and output sizes, depth, the render's time budget
render_error.py     RenderError
message.py          the MIME message for one recipient (headers, parts, Message-ID)
"""
