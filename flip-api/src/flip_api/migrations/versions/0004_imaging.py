"""Imaging imports: the latest gated imaging status per (project, trust) and the last imaging error.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:12:44.301822
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('imaging_imports',
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('trust_id', sa.Uuid(), nullable=False),
    sa.Column('import_task_id', sa.Uuid(), nullable=True),
    sa.Column('min_k', sa.Integer(), nullable=False),
    sa.Column('status', postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=True),
    sa.Column('reported_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('task_id', sa.Uuid(), nullable=True),
    sa.Column('refresh_requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_detail', sa.Text(), nullable=True),
    sa.Column('error_task_type', sa.String(length=32), nullable=True),
    sa.Column('error_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['import_task_id'], ['trust_tasks.id'], name=op.f('fk_imaging_imports_import_task_id_trust_tasks'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_imaging_imports_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['trust_tasks.id'], name=op.f('fk_imaging_imports_task_id_trust_tasks'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['trust_id'], ['trusts.id'], name=op.f('fk_imaging_imports_trust_id_trusts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_imaging_imports')),
    sa.UniqueConstraint('project_id', 'trust_id', name=op.f('uq_imaging_imports_project_id'))
    )
    op.create_index(op.f('ix_imaging_imports_trust_id'), 'imaging_imports', ['trust_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_imaging_imports_trust_id'), table_name='imaging_imports')
    op.drop_table('imaging_imports')
